"""Master settings (``HISCRM_*``), on top of the bus settings."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from hiscrm_bus.errors import ConfigurationError
from hiscrm_bus.settings import BusSettings, masked_url

from .database import DEFAULT_URL, database_url, read_password_file

# the longest retention: 100 years (a longer one is no limit, and overflows dates)
MAX_RETENTION_DAYS = 36_500


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
    # crawled comments and DMs (HISCRM_DATABASE_URL): an SQLite file by default,
    # postgresql+asyncpg://user@host/db in production
    database_url: str = DEFAULT_URL
    # PostgreSQL's password (the URL names the user): read once, at start, its trailing
    # newline stripped, and given to the driver only (never in the URL's text)
    database_password_file: Path | None = None
    _database_password: SecretStr | None = PrivateAttr(default=None)
    # keep crawled items this many days (by their creation time); unset: keep all
    retention_days: float | None = Field(None, gt=0)
    # how often removed accounts' data is deleted, and retention applied
    archive_interval_s: float = Field(1.0, gt=0)
    retention_interval_s: float = Field(3600.0, gt=0)

    @field_validator("retention_days")
    @classmethod
    def _check_retention_days(cls, value: float | None) -> float | None:
        if value is not None and not value <= MAX_RETENTION_DAYS:
            raise ValueError(
                f"HISCRM_RETENTION_DAYS must be at most {MAX_RETENTION_DAYS} (100 years); "
                "unset it to keep everything"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            database_url(value)
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _read_database_password(self) -> Self:
        if self.database_password_file is not None:
            try:
                self._database_password = read_password_file(
                    self.database_url, self.database_password_file
                )
            except ConfigurationError as exc:
                raise ValueError(str(exc)) from None
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name == "database_url" else value

    def database_password(self) -> SecretStr | None:
        """The password from HISCRM_DATABASE_PASSWORD_FILE, not the URL's."""
        return self._database_password

    @property
    def shown_database_url(self) -> str:
        """``database_url`` as it may be shown: password masked."""
        return masked_url(self.database_url)
