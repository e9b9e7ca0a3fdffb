"""``hiscrm health``, the compose healthchecks' command: exit 0 only while the role is
alive as Redis sees it, 1 with one sentence when not, 2 when Redis is unreachable."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis

from hiscrm_bus.keys import Keys
from tests.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.real]


def _health(url: str, prefix: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HISCRM_")}
    clean.update(HISCRM_REDIS_URL=url, HISCRM_KEY_PREFIX=prefix, **env)
    return subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "health", *args],
        env=clean,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_master_health_follows_its_liveness_deadline(redis_server: RedisServer) -> None:
    prefix = "health-m:"
    r = redis.Redis.from_url(redis_server.url)
    masters = Keys(prefix).masters

    gone = _health(redis_server.url, prefix, "master", "--id", "m1")
    assert gone.returncode == 1
    assert "master m1 has no liveness entry" in gone.stderr

    r.zadd(masters, {"m1": time.time() + 3})
    alive = _health(redis_server.url, prefix, "master", HISCRM_MASTER_ID="m1")
    assert alive.returncode == 0, alive.stderr
    assert "master m1 is alive" in alive.stdout

    r.zadd(masters, {"m1": time.time() - 20})
    late = _health(redis_server.url, prefix, "master", "--id", "m1")
    assert late.returncode == 1
    assert "missed its liveness deadline" in late.stderr

    # a Master's default id is per process: the healthcheck must name it
    unnamed = _health(redis_server.url, prefix, "master")
    assert unnamed.returncode == 2
    assert "--id" in unnamed.stderr


def test_worker_health_follows_its_heartbeat(redis_server: RedisServer) -> None:
    prefix = "health-w:"
    r = redis.Redis.from_url(redis_server.url)
    key = Keys(prefix).worker("w1")

    gone = _health(redis_server.url, prefix, "worker", "--id", "w1")
    assert gone.returncode == 1
    assert "worker w1 has no registry entry" in gone.stderr

    r.hset(key, mapping={"id": "w1", "heartbeat_at": datetime.now(UTC).isoformat()})
    alive = _health(redis_server.url, prefix, "worker", HISCRM_WORKER_ID="w1")
    assert alive.returncode == 0, alive.stderr
    assert "worker w1 is alive" in alive.stdout

    old = datetime.now(UTC) - timedelta(seconds=30)
    r.hset(key, "heartbeat_at", old.isoformat())
    stale = _health(redis_server.url, prefix, "worker", "--id", "w1")
    assert stale.returncode == 1
    assert "last heartbeat is" in stale.stderr


def test_health_is_exit_2_when_redis_is_unreachable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for role in ("master", "worker"):
        result = _health(url, "hiscrm:", role, "--id", "x")
        assert result.returncode == 2
        assert "Cannot reach Redis" in result.stderr
