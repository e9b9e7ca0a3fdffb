# hiscrm — `make test` runs every gate; `make demo` runs the product. Both bootstrap
# what they need on a fresh Debian machine: a venv with the project and its test deps,
# and Debian's redis-server (installed with apt-get when run as root).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: test demo lint typecheck pytest soak bootstrap system-deps clean

test: bootstrap lint typecheck pytest

bootstrap: system-deps $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

system-deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: install it (Debian: sudo apt-get install redis-server)"; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# the short forms of the fault runs; `make soak` runs the long ones
pytest: $(STAMP)
	$(VENV)/bin/pytest -m "not soak" $(PYTEST_ARGS)

soak: bootstrap
	$(VENV)/bin/pytest -m soak $(PYTEST_ARGS)

demo: bootstrap
	./scripts/demo.sh

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache .hypothesis
