"""A registry field a worker made huge is left unread, not only unparsed: its size is
looked at first, so a reader (the Master every liveness pass, the console every few
seconds) neither transfers nor holds it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry

Bus = tuple[Redis, BusSettings]


async def sent_bytes(redis: Redis) -> int:
    """What the server sent its clients so far (0 on fakeredis, which has no INFO)."""
    try:
        stats: Any = await redis.info("stats")
    except ResponseError:
        return 0
    return int(stats.get("total_net_output_bytes", 0))


async def test_an_oversized_tasks_field_is_not_transferred(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    redis, settings = bus
    registry = WorkerRegistry(redis, settings.keys)
    w1 = "w-" + settings.key_prefix.rstrip(":")  # its own: a size is told once per process
    await registry.heartbeat(WorkerInfo(id=w1, host="h1", platforms=("synthetic",)), 60)
    await redis.hset(settings.keys.worker(w1), "tasks", "[" + "1," * 10_000_000 + "1]")
    before = await sent_bytes(redis)
    with caplog.at_level(logging.WARNING, logger="hiscrm_bus.workers"):
        for _ in range(2):
            alive, dead = await registry.all()
            (worker,) = alive
            assert (worker.id, worker.host, worker.platforms, worker.tasks) == (
                w1,
                "h1",
                ("synthetic",),
                {},
            )
            assert dead == []
    if before:  # a real redis-server: what it sent the two reads
        assert await sent_bytes(redis) - before < 100_000
    oversized = [r for r in caplog.records if "registry field tasks is too large" in r.message]
    assert len(oversized) == 1


async def test_a_field_that_stays_too_large_is_told_once_however_its_size_changes(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """Each heartbeat changes the size of a worker's tasks: still one line while it
    stays too large, and one more only after it was within its limit again."""
    redis, settings = bus
    registry = WorkerRegistry(redis, settings.keys)
    w1 = "w-grow-" + settings.key_prefix.rstrip(":")
    await registry.heartbeat(WorkerInfo(id=w1, platforms=("synthetic",)), 60)
    key = settings.keys.worker(w1)
    with caplog.at_level(logging.WARNING, logger="hiscrm_bus.workers"):
        for n in range(3):  # too large, a different size each time
            await redis.hset(key, "tasks", "[" + "1," * (5_000_000 + n) + "1]")
            await registry.all()
        await redis.hset(key, "tasks", "{}")
        await registry.all()  # within its limit again
        await redis.hset(key, "tasks", "[" + "1," * 5_000_000 + "1]")
        await registry.all()
    told = [r for r in caplog.records if "registry field tasks is too large" in r.message]
    assert len(told) == 2
