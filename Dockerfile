FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY hiscrm_bus hiscrm_bus
COPY hiscrm_master hiscrm_master
COPY hiscrm_worker hiscrm_worker
COPY hiscrm_cli hiscrm_cli
RUN pip install --no-cache-dir .
ENTRYPOINT ["hiscrm"]
