"""The session vault: sessions sealed with the workers' key, bound to their account,
versioned; a wrong key or a damaged blob is a clear, per-account error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from hiscrm_bus.errors import ConfigurationError
from hiscrm_bus.settings import BusSettings
from hiscrm_worker.vault import (
    SessionUnreadable,
    SessionVault,
    new_key,
    read_key_file,
    write_key_file,
)
from tests.redis_server import RedisServer

Bus = tuple[Redis, BusSettings]
STATE = {
    "cookies": [{"name": "sid", "value": "secret-cookie-value", "domain": "127.0.0.1"}],
    "origins": [],
}


def vault(redis: Redis, settings: BusSettings, tmp_path: Path, name: str = "k") -> SessionVault:
    path = tmp_path / name
    if not path.exists():
        write_key_file(path)
    return SessionVault(redis, settings.keys, read_key_file(path), "w1")


async def test_a_session_round_trips_sealed(bus: Bus, tmp_path: Path) -> None:
    redis, settings = bus
    v = vault(redis, settings, tmp_path)
    assert await v.get("acc-1") is None
    assert await v.put("acc-1", STATE) == 1
    assert await v.put("acc-1", STATE) == 2
    stored = await v.get("acc-1")
    assert stored is not None and stored.state == STATE and stored.version == 2
    raw = await redis.hgetall(settings.keys.session("acc-1"))
    assert b"secret-cookie-value" not in b"".join(raw.values())  # Redis alone leaks nothing
    assert raw[b"by"] == b"w1"


async def test_another_key_cannot_open_it(bus: Bus, tmp_path: Path) -> None:
    redis, settings = bus
    await vault(redis, settings, tmp_path, "a").put("acc-1", STATE)
    with pytest.raises(SessionUnreadable, match="does not decrypt"):
        await vault(redis, settings, tmp_path, "b").get("acc-1")


async def test_a_session_is_bound_to_its_account(bus: Bus, tmp_path: Path) -> None:
    """A blob copied from one account to another does not open there."""
    redis, settings = bus
    v = vault(redis, settings, tmp_path)
    await v.put("acc-2", STATE)
    blob = await redis.hget(settings.keys.session("acc-2"), "blob")
    await redis.hset(settings.keys.session("acc-1"), mapping={"blob": blob, "version": 1})
    with pytest.raises(SessionUnreadable):
        await v.get("acc-1")
    await redis.hset(settings.keys.session("acc-1"), "blob", b"garbage")
    with pytest.raises(SessionUnreadable):
        await v.get("acc-1")


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "session.key"
    write_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(read_key_file(path)) == 32
    with pytest.raises(FileExistsError):
        write_key_file(path)
    (tmp_path / "short").write_text(new_key()[:10])
    for bad, said in [
        (tmp_path / "short", "does not hold a key"),
        (tmp_path / "no", "cannot read"),
    ]:
        with pytest.raises(ConfigurationError, match=said):
            read_key_file(bad)


def _hiscrm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )


def test_keygen_and_a_worker_with_a_bad_key_file(tmp_path: Path, redis_server: RedisServer) -> None:
    out = tmp_path / "session.key"
    made = _hiscrm("session", "keygen", "--out", str(out))
    assert made.returncode == 0, made.stderr
    assert out.read_text().strip() not in made.stdout + made.stderr
    again = _hiscrm("session", "keygen", "--out", str(out))
    assert again.returncode == 2 and "exists already" in again.stderr
    (tmp_path / "bad.key").write_text("not a key\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "HISCRM_REDIS_URL": redis_server.url,
        "HISCRM_SESSION_KEY_FILE": str(tmp_path / "bad.key"),
        "HISCRM_PLATFORMS": "synthetic",
    }
    worker = _hiscrm("worker", "--id", "wk", env=env)
    assert worker.returncode == 2, worker.stderr
    assert "session key file" in worker.stderr and "Traceback" not in worker.stderr
