"""``hiscrm health master|worker``: is this process's role alive, as Redis sees it?

For a container's healthcheck: it asks Redis what the rest of the fleet relies on, not
whether a process exists. A Master is alive while its entry in the ``masters`` sorted
set holds a liveness deadline still ahead (each liveness pass pushes it forward); a
worker while its registry hash holds a heartbeat younger than its heartbeat TTL (the
Master moves the accounts of a worker silent for longer). Exit 0 alive, 1 not alive
(one sentence says why), 2 Redis unreachable or refusing these credentials.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer

from hiscrm_bus.connection import call
from hiscrm_bus.workers import WorkerRegistry
from hiscrm_master.settings import MasterSettings
from hiscrm_worker.settings import WorkerSettings

from .common import EXIT_FAILED, RedisUrl, build, console, fail, redis_client, run
from .terminal import safe


class Role(StrEnum):
    master = "master"
    worker = "worker"


def health(
    role: Annotated[Role, typer.Argument(help="The role this process plays.")],
    process_id: Annotated[
        str | None,
        typer.Option(
            "--id",
            help="The Master's or worker's id (default: HISCRM_MASTER_ID or HISCRM_WORKER_ID).",
            show_default=False,
        ),
    ] = None,
    redis_url: RedisUrl = None,
) -> None:
    """Exit 0 if this Master or worker is alive per Redis, 1 (with the reason) if not,
    2 if Redis is unreachable."""
    if role is Role.master:
        if process_id is None and not os.environ.get("HISCRM_MASTER_ID"):
            fail("name the Master: --id ID, or HISCRM_MASTER_ID (its default id is per process)")
        master = build(MasterSettings, redis_url=redis_url, master_id=process_id)
        verdict = run(lambda: _master_alive(master))
    else:
        worker = build(WorkerSettings, redis_url=redis_url, worker_id=process_id)
        verdict = run(lambda: _worker_alive(worker))
    alive, sentence = verdict
    if not alive:
        fail(sentence, EXIT_FAILED)
    console.print(sentence, highlight=False)


async def _master_alive(settings: MasterSettings) -> tuple[bool, str]:
    name = f"master {safe(settings.master_id)}"
    async with redis_client(settings) as redis:
        deadline = await call(redis.zscore(settings.keys.masters, settings.master_id))
    if deadline is None:
        return False, f"{name} has no liveness entry in Redis (not started, or removed)"
    left = float(deadline) - time.time()
    if left < 0:
        return False, f"{name} missed its liveness deadline {-left:.1f} s ago"
    return True, f"{name} is alive (liveness deadline in {left:.1f} s)"


async def _worker_alive(settings: WorkerSettings) -> tuple[bool, str]:
    name = f"worker {safe(settings.worker_id)}"
    async with redis_client(settings) as redis:
        info = await WorkerRegistry(redis, settings.keys).get(settings.worker_id)
    if info is None:
        return False, f"{name} has no registry entry in Redis (not started, or silent too long)"
    if info.heartbeat_at is None:
        return False, f"{name} is registered but has not sent a heartbeat yet"
    at = info.heartbeat_at if info.heartbeat_at.tzinfo else info.heartbeat_at.replace(tzinfo=UTC)
    age = (datetime.now(UTC) - at).total_seconds()
    if age > settings.heartbeat_ttl_s:
        return False, (
            f"{name}'s last heartbeat is {age:.1f} s old "
            f"(older than its {settings.heartbeat_ttl_s:g} s TTL)"
        )
    return True, f"{name} is alive (last heartbeat {max(age, 0.0):.1f} s ago)"
