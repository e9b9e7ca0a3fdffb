"""Acknowledged entries leave Redis (issue 16): a worker's ingest stream keeps only what
no Master has stored yet, not every batch up to its cap."""

from __future__ import annotations

from redis.asyncio import Redis

from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import trim_consumed

Bus = tuple[Redis, BusSettings]


async def entries(redis: Redis, stream: str) -> list[str]:
    return [e[0].decode() for e in await redis.xrange(stream)]


async def test_only_read_and_acknowledged_entries_go(bus: Bus) -> None:
    redis, settings = bus
    stream = settings.keys.worker_stream("w1", "ingest")
    ids = [await redis.xadd(stream, {"msg": str(n)}, id=f"{n + 1}-0") for n in range(10)]
    await redis.xgroup_create(stream, "masters", id="0")
    read = await redis.xreadgroup("masters", "m1", {stream: ">"}, count=6)
    assert len(read[0][1]) == 6
    await redis.xack(stream, "masters", ids[0], ids[1], ids[3], ids[4])  # 3-0 and 6-0 pending

    await trim_consumed(redis, [stream], "masters")
    # from the oldest unacknowledged on; the unread 7..10 stay too
    assert await entries(redis, stream) == [f"{n}-0" for n in range(3, 11)]

    await redis.xack(stream, "masters", ids[2], ids[5])
    await trim_consumed(redis, [stream], "masters")
    assert await entries(redis, stream) == [f"{n}-0" for n in range(7, 11)]  # unread stay


async def test_streams_read_by_another_group_or_none_are_left_alone(bus: Bus) -> None:
    redis, settings = bus
    shared = settings.keys.worker_stream("w1", "events")
    ungrouped = settings.keys.worker_stream("w2", "events")
    missing = settings.keys.worker_stream("w3", "events")
    for stream in (shared, ungrouped):
        for n in range(3):
            await redis.xadd(stream, {"msg": str(n)})
    await redis.xgroup_create(shared, "masters", id="0")
    await redis.xgroup_create(shared, "auditors", id="0")
    await redis.xreadgroup("masters", "m1", {shared: ">"})
    await redis.xack(shared, "masters", *[e[0] for e in await redis.xrange(shared)])

    await trim_consumed(redis, [shared, ungrouped, missing], "masters")
    assert len(await entries(redis, shared)) == 3  # the auditors have not read them
    assert len(await entries(redis, ungrouped)) == 3
    assert not await redis.exists(missing)
