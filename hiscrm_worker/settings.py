"""Worker settings (``HISCRM_*``), on top of the bus settings."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from hiscrm_bus.accounts import ID_PATTERN, PLATFORMS, unknown_platform
from hiscrm_bus.settings import BusSettings


class WorkerSettings(BusSettings):
    worker_id: str = Field(default_factory=socket.gethostname, pattern=ID_PATTERN)
    capacity: int = Field(50, ge=0, le=10_000)
    # HISCRM_PLATFORMS=sandbox,synthetic (or a JSON list): the platforms this worker runs
    platforms: Annotated[tuple[str, ...], NoDecode] = PLATFORMS
    heartbeat_interval_s: float = Field(2.0, gt=0)
    heartbeat_ttl_s: float = Field(10.0, gt=0)
    # anti-entropy: compare applied versions with the hashes this often
    reconcile_interval_s: float = Field(30.0, gt=0)
    # per-account browser sessions (mode 0600, in a 0700 directory) and Chromium's files
    data_dir: Path = Path("var/worker")
    chromium: str = "/usr/bin/chromium"
    sandbox_url: str = "http://127.0.0.1:8765"
    # the key that seals browser sessions in Redis (`hiscrm session keygen`); without
    # it sessions stay on this host's disk and do not follow a failover
    session_key_file: Path | None = None

    @field_validator("platforms", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    raise ValueError(f"{text!r} is not a JSON list of platforms") from None
            return tuple(p.strip() for p in text.split(",") if p.strip())
        return value

    @field_validator("platforms")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"name at least one platform ({', '.join(PLATFORMS)})")
        for name in value:
            if name not in PLATFORMS:
                raise ValueError(unknown_platform(name))
        return value

    @model_validator(mode="after")
    def _ttl_outlives_interval(self) -> WorkerSettings:
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            msg = (
                f"heartbeat TTL ({self.heartbeat_ttl_s}s) must be longer than the heartbeat "
                f"interval ({self.heartbeat_interval_s}s)"
            )
            raise ValueError(msg)
        return self


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """``path``, created if missing, that only this user may list or enter (0700).

    ``tighten`` also takes group and other access away from a directory that exists
    already (one of hiscrm's own, left by an older version); a directory the operator
    named is created private but otherwise left as it is."""
    existed = path.is_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not existed or tighten:
        path.chmod(0o700)  # mkdir's mode is filtered through the umask
    return path


def write_private(path: Path, text: str, *, new: bool = False) -> None:
    """Write ``text`` to ``path``, mode 0600 from its first byte. ``new``: only if the
    file does not exist yet (FileExistsError otherwise: a key or password is never
    overwritten); else it replaces the file whole (a reader never sees half of it)."""
    if new:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)
