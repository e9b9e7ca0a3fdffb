# One image for every hiscrm process: the Master, the workers (with Debian's Chromium,
# which Playwright drives: nothing downloads a browser), the sandbox site, the web
# console and the CLI.
#
#   docker build -t hiscrm .                   # on python:3.11-slim-bookworm
#   podman build --build-arg BASE_IMAGE=localhost/debian:bookworm-base -t hiscrm .
#
# BASE_IMAGE may be any Debian 12 image: where it has no python3, Debian's is installed.
# Behind a TLS-intercepting proxy, give pip its CA: --secret id=pip_ca,src=/path/ca.pem
# (and PIP_INDEX_URL for a mirror). Neither ends up in the image.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
# tini is PID 1: it forwards signals to hiscrm and reaps Chromium's orphans; Playwright's
# own node (its driver, in the wheel) needs libatomic1
RUN set -eux; \
    packages="chromium fonts-noto-cjk libatomic1 tini"; \
    command -v python3 >/dev/null || packages="$packages python3 python3-venv"; \
    apt-get update; \
    apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/hiscrm; \
    groupadd --system --gid 10001 hiscrm; \
    useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/hiscrm \
        --shell /usr/sbin/nologin hiscrm; \
    install -d -o hiscrm -g hiscrm -m 0700 /data

# dependencies first (their layer survives a change of hiscrm's own code)
ARG PIP_INDEX_URL=https://pypi.org/simple
COPY pyproject.toml README.md /tmp/hiscrm/
RUN --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    cd /tmp/hiscrm; \
    for p in hiscrm_bus hiscrm_master hiscrm_worker hiscrm_sandbox hiscrm_web hiscrm_cli; do \
        mkdir -p $p && touch $p/__init__.py; \
    done; \
    /opt/hiscrm/bin/pip install --no-cache-dir --disable-pip-version-check -q . ; \
    rm -rf /tmp/hiscrm

COPY pyproject.toml README.md /tmp/hiscrm/
COPY hiscrm_bus /tmp/hiscrm/hiscrm_bus
COPY hiscrm_master /tmp/hiscrm/hiscrm_master
COPY hiscrm_worker /tmp/hiscrm/hiscrm_worker
COPY hiscrm_sandbox /tmp/hiscrm/hiscrm_sandbox
COPY hiscrm_web /tmp/hiscrm/hiscrm_web
COPY hiscrm_cli /tmp/hiscrm/hiscrm_cli
RUN --mount=type=secret,id=pip_ca \
    set -eu; \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    /opt/hiscrm/bin/pip install --no-cache-dir --disable-pip-version-check -q \
        --no-deps --force-reinstall /tmp/hiscrm; \
    rm -rf /tmp/hiscrm; \
    /opt/hiscrm/bin/hiscrm --help >/dev/null

ENV PATH=/opt/hiscrm/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HISCRM_CHROMIUM=/usr/bin/chromium \
    HISCRM_DATA_DIR=/data
USER hiscrm
WORKDIR /home/hiscrm
ENTRYPOINT ["/usr/bin/tini", "--", "hiscrm"]
CMD ["--help"]
