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
