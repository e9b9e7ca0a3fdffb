"""Crawl runs in the database (issue 16): a batch is a run with what it found, a task's
crawl error is a run with its error, and the event stream never waits long for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.limits import utcnow
from hiscrm_bus.messages import CrawlBatch, CrawledItem, TaskStatus
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import Received
from hiscrm_master.archive import Arrival
from hiscrm_master.service import TRANSACTION_ITEMS, Master, _parts
from hiscrm_master.settings import MasterSettings

Bus = tuple[Redis, BusSettings]


@pytest.fixture
async def master(real: Bus, database_url: str) -> AsyncIterator[Master]:
    redis, settings = real
    await AccountStore(redis, settings.keys).create(
        AccountConfig(id="acc-1", platform="synthetic", worker_id="w1")
    )
    values = {**settings.model_dump(), "master_id": "m1", "database_url": database_url}
    m = Master(MasterSettings.model_validate(values), redis)
    yield m
    await m.archive.close()


def received(message: CrawlBatch | TaskStatus, kind: str) -> Received:
    stream = f"t:worker:w1:out:{kind}"
    return Received(source="w1", stream=stream, message=message, entry_id="1-0")


async def test_batches_and_crawl_errors_are_crawl_runs(master: Master) -> None:
    item = CrawledItem(kind="comment", item_id="c1", text="好看", created_at=utcnow())
    batch = CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=(item,))
    await master.on_batches([received(batch, "ingest")])
    await master.on_batches([received(batch, "ingest")])  # re-read after a crash: once
    error = TaskStatus(
        sender="w1",
        account_id="acc-1",
        worker_id="w1",
        state="error",
        config_version=2,
        error="platform_changed: the comment list has no cursor",
    )
    await master.on_events([received(error, "events")])
    await master.on_events([received(error, "events")])
    counts = (await master.archive.counts(["acc-1"]))["acc-1"]
    assert (counts.comments, counts.crawl_runs, counts.errors) == (1, 2, 1)
    # the last crawl is the last one that found something, not the error
    assert counts.last_crawl_at == batch.crawled_at


def comments(first: int, count: int) -> tuple[CrawledItem, ...]:
    now = utcnow()
    return tuple(
        CrawledItem(kind="comment", item_id=f"c{n}", text=f"评论 {n}", created_at=now)
        for n in range(first, first + count)
    )


async def test_a_big_read_is_stored_in_parts_and_whole(master: Master) -> None:
    """A read of 9,000 items over three batches goes in transactions of at most 5,000
    items (never cutting a batch), and every item and run is stored once."""
    read = [
        received(
            CrawlBatch(
                sender="w1", account_id="acc-1", worker_id="w1", items=comments(n * 3000, 3000)
            ),
            "ingest",
        )
        for n in range(3)
    ]
    pairs = [(r, Arrival(r.message)) for r in read]  # type: ignore[arg-type]
    assert [len(p) for p in _parts(pairs, TRANSACTION_ITEMS)] == [1, 1, 1]
    assert [len(p) for p in _parts(pairs, 6000)] == [2, 1]
    assert [len(p) for p in _parts(pairs, 100)] == [1, 1, 1]  # a big batch stays whole
    await master.on_batches(read)
    counts = (await master.archive.counts(["acc-1"]))["acc-1"]
    assert (counts.comments, counts.crawl_runs) == (9000, 3)
