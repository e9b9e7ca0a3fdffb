# hiscrm — `make test` runs every gate; `make demo` runs the product. Both bootstrap
# what they need on a fresh Debian machine: a venv with the project and its test deps,
# and Debian's redis-server, chromium and postgresql (installed with apt-get when run as
# root; Playwright drives Debian's Chromium, it never downloads a browser).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: test demo lint typecheck pytest soak bootstrap system-deps clean

test: bootstrap lint typecheck pytest bench-smoke

bootstrap: system-deps $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

SYSTEM_PACKAGES := redis-server:redis-server chromium:chromium
# Debian keeps PostgreSQL's programs off PATH, in /usr/lib/postgresql/<N>/bin; the tests
# (tests/postgres_server.py) take the newest N, so this looks there, not on PATH
POSTGRES_INITDB := /usr/lib/postgresql/*/bin/initdb

system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	set -- $(POSTGRES_INITDB); test -x "$$1" || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing (Debian: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# the short forms of the fault runs; `make soak` runs the long ones. On PYTEST_WORKERS
# processes (pytest-xdist; each starts its own redis-server and PostgreSQL on free ports,
# in temporary directories of its own): most tests wait on real processes, so on 2 cores
# two at a time take 6-6.5 minutes where one at a time took 10. PYTEST_WORKERS=0: one
# at a time, in pytest's own process (--pdb needs it). Tests marked
# xdist_group("name") all run on the same worker.
PYTEST_WORKERS ?= 2
pytest: $(STAMP)
	$(VENV)/bin/pytest -m "not soak and not stack" -n $(PYTEST_WORKERS) --dist loadgroup --durations=15 $(PYTEST_ARGS)

soak: bootstrap
	$(VENV)/bin/pytest -m soak $(PYTEST_ARGS)

demo: bootstrap
	$(VENV)/bin/hiscrm up --demo

# the README's pictures of the web console (docs/fleet.png, docs/login-modal.png), taken
# in Debian's Chromium against a scratch `hiscrm up`
.PHONY: screenshots
screenshots: bootstrap
	$(PY) docs/screenshots.py

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache .hypothesis

# DESIGN.md §7: delivery latency, throughput across 100 workers, reconcile of 10,000
# accounts and Celery's broadcast, each beside the raw Redis floor measured in the same
# run; prints a table and updates benchmarks/RESULTS.md. BENCH_ARGS for longer runs.
# bench-smoke (part of `make test`): every scenario at tiny sizes, a few seconds, so a
# library change that breaks the benchmark fails the gate; writes no results.
.PHONY: bench bench-smoke
BENCH_ARGS ?=
bench: bootstrap
	$(PY) -m benchmarks.delivery $(BENCH_ARGS)
	$(PY) -m benchmarks.delivery --cluster $(BENCH_ARGS)
	$(PY) -m benchmarks.web
	$(PY) -m benchmarks.startup

bench-smoke: bootstrap
	$(PY) -m benchmarks.delivery --smoke
	$(PY) -m benchmarks.delivery --smoke --cluster
	$(PY) -m benchmarks.web --smoke
	$(PY) -m benchmarks.startup --smoke

# The compose stack (compose.yaml, Dockerfile, deploy/). stack-test builds the images
# with podman from a Debian base made here (no container registry needed) and plays the
# seed's scenario through podman-compose (tests/stack/test_compose.py); it installs
# podman and its helpers with apt-get when they are missing. stack-secrets makes what
# the stack mounts (deploy/secrets/, .env); stack-add-worker N=3 adds worker w3.
.PHONY: stack-test stack-deps stack-secrets stack-add-worker
STACK_STAMP := $(VENV)/.stack-stamp
STACK_PACKAGES := podman runc netavark aardvark-dns slirp4netns uidmap fuse-overlayfs mmdebstrap iptables

$(STACK_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,stack]'
	@touch $@

stack-deps: $(STACK_STAMP)
	@missing=""; for pkg in $(STACK_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$pkg 2>/dev/null | grep -q 'install ok installed' \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing system packages:$$missing (Debian: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

stack-test: stack-deps
	$(VENV)/bin/pytest -m stack tests/stack -s -p no:cacheprovider $(PYTEST_ARGS)

stack-secrets: $(STAMP)
	$(PY) deploy/stack.py init

stack-add-worker: $(STAMP)
	@test -n "$(N)" || { echo "usage: make stack-add-worker N=3 (adds worker w3)"; exit 2; }
	$(PY) deploy/stack.py add-worker $(N)
