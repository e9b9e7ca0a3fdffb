"""Settings shared by every hiscrm process, read from ``HISCRM_*`` environment variables."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .keys import Keys


class BusSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HISCRM_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = Field("hiscrm:", min_length=1)
    # how long a connect / command may take before Redis counts as unreachable
    redis_timeout_s: float = Field(5.0, ge=2)
    # the subscriber's own liveness check on its pub/sub connection
    ping_interval_s: float = Field(5.0, gt=0)
    ping_timeout_s: float = Field(3.0, gt=0)
    # reconnect backoff of every resilient loop
    backoff_min_s: float = Field(0.05, gt=0)
    backoff_max_s: float = Field(5.0, gt=0)
    # pending config updates
    ack_timeout_s: float = Field(5.0, gt=0)
    retry_backoff: float = Field(2.0, ge=1)
    max_attempts: int = Field(4, ge=1)
    # stream trimming (approximate MAXLEN)
    stream_maxlen: int = Field(100_000, ge=100)
    deadletter_maxlen: int = Field(10_000, ge=10)
    deadletter_raw_bytes: int = Field(4096, ge=64)
    # stream consumers: an entry idle this long in a dead consumer's PEL is claimed
    claim_idle_s: float = Field(30.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            msg = f"Redis URL {value!r} must start with redis://, rediss:// or unix://"
            raise ValueError(msg)
        if parts.scheme != "unix" and not parts.hostname:
            msg = f"Redis URL {value!r} names no host"
            raise ValueError(msg)
        return value

    @property
    def keys(self) -> Keys:
        return Keys(self.key_prefix)
