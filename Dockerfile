FROM python:3.11-slim-bookworm
# Debian's Chromium: Playwright drives it through executable_path, never downloads one
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium fonts-noto-cjk \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hiscrm_bus hiscrm_bus
COPY hiscrm_master hiscrm_master
COPY hiscrm_worker hiscrm_worker
COPY hiscrm_sandbox hiscrm_sandbox
COPY hiscrm_cli hiscrm_cli
RUN pip install --no-cache-dir .
ENV HISCRM_CHROMIUM=/usr/bin/chromium HISCRM_DATA_DIR=/data
ENTRYPOINT ["hiscrm"]
