"""Removing an account removes everything of it (issue 15, finding 6): config, pending
updates, crawled items and stats; a batch that arrives during or after the removal
cannot bring its data back; an id added again starts empty."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.errors import AccountNotFound
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import Received
from hiscrm_master.ingest import IngestStore
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_master.updates import Updates

Bus = tuple[Redis, BusSettings]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def comment(n: int, kind: Literal["comment", "dm"] = "comment") -> CrawledItem:
    return CrawledItem(
        kind=kind,
        item_id=f"{kind}-{n}",
        text=f"text {n}",
        created_at=T0 + timedelta(seconds=n),
    )


def batch(*items: CrawledItem, worker: str = "w1") -> CrawlBatch:
    return CrawlBatch(sender=worker, account_id="acc-1", worker_id=worker, items=items)


async def account_keys(redis: Redis, settings: BusSettings) -> set[str]:
    pattern = f"{settings.keys.prefix}account:acc-1*"
    return {k.decode() async for k in redis.scan_iter(pattern)}


async def with_data(redis: Redis, settings: BusSettings) -> Updates:
    """acc-1 on w1 with crawled comments, a DM and an update w1 has not ACKed."""
    updates = Updates(redis, settings, "test")
    await updates.store.create(AccountConfig(id="acc-1", platform="sandbox", worker_id="w1"))
    await updates.items.store(batch(comment(1), comment(2), comment(3, "dm")))
    await updates.change("acc-1", {"name": "x"}, "admin_update")
    return updates


async def test_remove_deletes_everything_of_the_account(bus: Bus) -> None:
    redis, settings = bus
    keys = settings.keys
    updates = await with_data(redis, settings)
    (pending,) = await updates.tracker.of_account("acc-1")
    after = await updates.tracker.last_outcome_id()

    removal = await updates.remove("acc-1")

    assert (removal.version, removal.worker_id, removal.cancelled) == (2, "w1", 1)
    assert not removal.data_kept
    # nothing of acc-1 but the removal mark, which expires
    assert await account_keys(redis, settings) == {keys.crawl_stats("acc-1")}
    assert await redis.ttl(keys.crawl_stats("acc-1")) > 0
    assert not await redis.sismember(keys.accounts, "acc-1")
    assert not await redis.sismember(keys.worker_accounts("w1"), "acc-1")
    # its pending update ended now, with a reason, instead of being retried
    assert await redis.zscore(keys.pending, pending.update_id) is None
    outcomes = await updates.tracker.wait_outcomes([pending.update_id], after, 1)
    assert outcomes[pending.update_id].status == "failed"
    assert outcomes[pending.update_id].error == "account removed"

    await updates.store.create(AccountConfig(id="acc-1", platform="sandbox", worker_id="w1"))
    view = await updates.items.overview("acc-1", "comments", 10)
    assert view.exists and view.items == []
    assert view.stored == {"comments": 0, "dms": 0}
    assert (view.received.comments, view.received.dms, view.received.last_crawl_at) == (0, 0, None)
    assert await updates.tracker.of_account("acc-1") == []


async def test_keep_data_keeps_the_crawled_items(bus: Bus) -> None:
    redis, settings = bus
    updates = await with_data(redis, settings)

    removal = await updates.remove("acc-1", keep_data=True)

    assert removal.data_kept
    view = await updates.items.overview("acc-1", "comments", 10)
    assert not view.exists and view.known
    assert view.stored == {"comments": 2, "dms": 1}
    assert [i.item_id for i in view.items] == ["comment-2", "comment-1"]
    assert not await redis.exists(settings.keys.account("acc-1"))


async def test_removing_an_unknown_id_deletes_data_left_behind(bus: Bus) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, "test")
    # what an older version left after removing acc-1
    await updates.items.store(batch(comment(1)))
    with pytest.raises(AccountNotFound):
        await updates.remove("acc-1", keep_data=True)
    assert await updates.items.holds("acc-1")
    with pytest.raises(AccountNotFound):
        await updates.remove("acc-1")
    assert not await updates.items.holds("acc-1")
    assert not (await updates.items.overview("acc-1", "comments", 5)).known
    with pytest.raises(AccountNotFound):
        await updates.remove("nope")
    assert not await redis.exists(settings.keys.crawl_stats("nope"))


def master(redis: Redis, settings: BusSettings) -> Master:
    return Master(
        MasterSettings(
            redis_url=settings.redis_url, key_prefix=settings.key_prefix, master_id="m1"
        ),
        redis,
    )


def received(message: CrawlBatch, settings: BusSettings) -> list[Received]:
    stream = settings.keys.worker_stream(message.worker_id, "ingest")
    return [Received(source=message.worker_id, stream=stream, message=message)]


async def test_the_master_refuses_a_batch_for_a_removed_account(bus: Bus) -> None:
    redis, settings = bus
    m = master(redis, settings)
    updates = await with_data(redis, settings)
    await updates.remove("acc-1")

    # the worker's outbox still held a batch: an account with no hash has no owner
    await m.on_batches(received(batch(comment(7)), settings))

    assert not await m.items.holds("acc-1")
    assert await m.deadletters.counts() == {settings.keys.worker_stream("w1", "ingest"): 1}
    entries: Any = await redis.xrange(settings.keys.deadletter)
    assert entries[-1][1][b"reason"] == b"not_owner"


async def test_a_batch_accepted_just_before_the_removal_does_not_resurrect_data(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, settings = bus
    m = master(redis, settings)
    updates = await with_data(redis, settings)
    owners = m._owners

    async def owners_then_removal(account_ids: Sequence[str]) -> dict[str, str | None]:
        found = await owners(account_ids)  # w1 owns acc-1: the batch is accepted ...
        await updates.remove("acc-1")  # ... and the operator removes acc-1 right then
        return found

    monkeypatch.setattr(m, "_owners", owners_then_removal)
    await m.on_batches(received(batch(comment(8), comment(9, "dm")), settings))

    assert not await m.items.holds("acc-1")
    assert await account_keys(redis, settings) == {settings.keys.crawl_stats("acc-1")}

    # added again: its own batches are stored, nothing of the old account comes back
    monkeypatch.setattr(m, "_owners", owners)
    await updates.store.create(AccountConfig(id="acc-1", platform="sandbox", worker_id="w1"))
    await m.on_batches(received(batch(comment(10)), settings))
    view = await IngestStore(redis, settings.keys).overview("acc-1", "comments", 10)
    assert [i.item_id for i in view.items] == ["comment-10"]
    assert view.stored == {"comments": 1, "dms": 0}
    assert view.received.comments == 1
