"""Master settings (``HISCRM_*``), on top of the bus settings."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from hiscrm_bus.settings import BusSettings


def _default_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class MasterSettings(BusSettings):
    master_id: str = Field(default_factory=_default_id, min_length=1)
    consumer_group: str = "masters"
    # how often expired pending updates are retried or failed
    sweep_interval_s: float = Field(0.2, gt=0)
    # how often dead workers are looked for and unassigned accounts placed
    liveness_interval_s: float = Field(1.0, gt=0)
    # Prometheus metrics (off unless a port is given)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
