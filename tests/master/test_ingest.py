"""Ingestion: de-duplicated by the platform's id, capped, counted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import BusSettings
from hiscrm_master.ingest import IngestStore

Bus = tuple[Redis, BusSettings]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def item(n: int, kind: str = "comment") -> CrawledItem:
    return CrawledItem(
        kind=kind,  # type: ignore[arg-type]
        item_id=f"{kind}-{n}",
        text=f"text {n}",
        created_at=T0 + timedelta(seconds=n),
    )


def batch(*items: CrawledItem) -> CrawlBatch:
    return CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=items)


async def test_items_are_stored_once_newest_first(bus: Bus) -> None:
    redis, settings = bus
    store = IngestStore(redis, settings.keys)
    assert await store.store(batch(item(1), item(2), item(1, "dm"))) == {"comment": 2, "dm": 1}
    assert await store.store(batch(item(2), item(3))) == {"comment": 1}
    newest = await store.newest("acc-1", "comments", 10)
    assert [i.item_id for i in newest] == ["comment-3", "comment-2", "comment-1"]
    assert newest[0] == item(3)
    stats = await store.stats("acc-1")
    assert (stats.comments, stats.dms) == (3, 1)
    assert stats.last_crawl_at is not None


async def test_storage_is_capped_and_evicted_items_do_not_come_back(bus: Bus) -> None:
    redis, settings = bus
    store = IngestStore(redis, settings.keys, cap=3)
    await store.store(batch(*(item(n) for n in range(1, 6))))
    assert [i.item_id for i in await store.newest("acc-1", "comments", 10)] == [
        "comment-5",
        "comment-4",
        "comment-3",
    ]
    assert await redis.hlen(settings.keys.item_bodies("acc-1", "comments")) == 3
    # a re-crawl of an item older than everything kept is not stored again
    assert await store.store(batch(item(1))) == {"comment": 0}
    assert await store.store(batch(item(6))) == {"comment": 1}
    assert await redis.zcard(settings.keys.items("acc-1", "comments")) == 3


async def test_an_empty_crawl_still_records_the_crawl_time(bus: Bus) -> None:
    redis, settings = bus
    store = IngestStore(redis, settings.keys)
    assert (await store.stats("acc-1")).last_crawl_at is None
    await store.store(batch())
    assert (await store.stats("acc-1")).last_crawl_at is not None
    assert await store.newest("acc-1", "comments", 5) == []


async def test_stored_counts_what_is_kept_and_stats_what_was_received(bus: Bus) -> None:
    redis, settings = bus
    store = IngestStore(redis, settings.keys, cap=3)
    await store.store(batch(*(item(n) for n in range(1, 6)), item(1, "dm")))
    assert await store.stored("acc-1") == {"comments": 3, "dms": 1}
    stats = await store.stats("acc-1")
    assert (stats.comments, stats.dms) == (5, 1)  # received in all, evicted ones included
    await redis.set(settings.keys.items("acc-1", "dms"), "not a sorted set")
    assert await store.stored("acc-1") == {"comments": 3, "dms": 0}


async def test_forget_deletes_every_item_body_and_stat(bus: Bus) -> None:
    redis, settings = bus
    keys = settings.keys
    store = IngestStore(redis, keys)
    await store.store(batch(item(1), item(2, "dm")))
    await store.store(CrawlBatch(sender="w1", account_id="acc-2", worker_id="w1", items=(item(9),)))
    assert await store.holds("acc-1")
    assert await store.forget("acc-1") == 5  # 2 item sets, 2 body hashes, the stats
    assert not await store.holds("acc-1")
    assert await store.stored("acc-1") == {"comments": 0, "dms": 0}
    assert await store.newest("acc-1", "comments", 10) == []
    stats = await store.stats("acc-1")
    assert (stats.comments, stats.dms, stats.last_crawl_at) == (0, 0, None)
    # only the removal mark is left, and it expires
    left = {k.decode() async for k in redis.scan_iter(f"{keys.prefix}account:acc-1*")}
    assert left == {keys.crawl_stats("acc-1")}
    assert list(await redis.hgetall(keys.crawl_stats("acc-1"))) == [b"removed_at"]
    assert 0 < await redis.ttl(keys.crawl_stats("acc-1")) <= 3600
    # another account's data is untouched
    assert [i.item_id for i in await store.newest("acc-2", "comments", 10)] == ["comment-9"]


async def test_a_batch_after_forget_is_refused_until_the_account_exists_again(bus: Bus) -> None:
    redis, settings = bus
    keys = settings.keys
    store = IngestStore(redis, keys)
    await store.store(batch(item(1)))
    await store.forget("acc-1")
    # the Master accepted this batch while acc-1 had an owner; it is stored too late
    assert await store.store(batch(item(2), item(3, "dm"))) == {}
    assert not await store.holds("acc-1")
    # added again: its batches are stored, and the mark is gone for good
    await redis.hset(keys.account("acc-1"), mapping={"id": "acc-1", "platform": "sandbox"})
    assert await store.store(batch(item(4))) == {"comment": 1}
    assert await redis.ttl(keys.crawl_stats("acc-1")) == -1
    assert not await redis.hexists(keys.crawl_stats("acc-1"), "removed_at")
    assert [i.item_id for i in await store.newest("acc-1", "comments", 10)] == ["comment-4"]
