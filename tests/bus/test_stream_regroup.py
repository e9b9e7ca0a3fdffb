"""A stream its writer deletes (a worker may delete its own streams) costs the reader
that stream alone: it is made again after a growing back-off, the other streams are
read on, and the fleet's groups are neither remade nor re-read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
from redis.asyncio import Redis

from hiscrm_bus.messages import TaskStatus
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import Received, StreamReader, append

Bus = tuple[Redis, BusSettings]
WORKERS = 30


def status(worker: str, n: int) -> TaskStatus:
    return TaskStatus(
        sender=worker, account_id="acc-1", worker_id=worker, state="running", config_version=n
    )


async def calls(redis: Redis) -> dict[str, int]:
    stats: Any = await redis.info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("xreadgroup", "xgroup|create")
    }


async def test_a_stream_deleted_over_and_over_costs_the_reader_little(real: Bus) -> None:
    redis, settings = real
    keys = settings.keys
    streams = {keys.worker_stream(f"w{n}", "events"): f"w{n}" for n in range(WORKERS)}
    rogue = keys.worker_stream("w0", "events")

    async def discover() -> dict[str, str]:
        return streams

    async def live(sources: Sequence[str]) -> list[str]:
        return list(sources)

    reader = StreamReader(
        redis, settings, None, "masters", "m1", block_ms=500, discover=discover, live=live
    )
    got: list[Received] = []
    arrived = anyio.Event()

    async def handler(received: list[Received]) -> None:
        got.extend(received)
        if any(r.source == "w7" for r in got):
            arrived.set()

    async with anyio.create_task_group() as tg:
        await tg.start(reader.run_received, handler)
        before = await calls(redis)
        with anyio.fail_after(10):
            # w0 deletes its stream again and again for a second (writing between)
            end = anyio.current_time() + 1.0
            while anyio.current_time() < end:
                await append(redis, rogue, status("w0", 1), 100)
                await redis.delete(rogue)
                await anyio.sleep(0.002)
            # meanwhile and after, another worker's message is read
            await append(redis, keys.worker_stream("w7", "events"), status("w7", 2), 100)
            await arrived.wait()
        after = await calls(redis)
        tg.cancel_scope.cancel()
    # before: every NOGROUP remade all 30 groups and re-read each stream's pending
    # entries (thousands of reads a second)
    assert after["xreadgroup"] - before["xreadgroup"] < 100
    assert after["xgroup|create"] - before["xgroup|create"] < 40
    assert reader.regroups.total >= 1
