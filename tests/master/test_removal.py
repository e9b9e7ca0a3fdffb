"""Removing an account removes everything of it (issue 15, finding 6): config and
pending updates at once, and its crawled data in the database (issue 16) by the
Master's next archive pass, which the removal queues in Redis; a batch that arrives
during or after the removal cannot bring its data back; an id added again starts empty.
Redis never holds crawled items: it carries only the bus."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.errors import AccountNotFound
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import Received
from hiscrm_master.archive import Arrival, Counts, Filter
from hiscrm_master.database import DatabaseUnavailable
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_master.snapshot import account_data
from hiscrm_master.updates import Updates
from tests.postgres_server import free_port

Bus = tuple[Redis, BusSettings]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def comment(n: int, kind: Literal["comment", "dm"] = "comment") -> CrawledItem:
    extra = {"work_id": "v1"} if kind == "comment" else {"conversation_id": "conv-1"}
    return CrawledItem(
        kind=kind,
        item_id=f"{kind}-{n}",
        text=f"text {n}",
        created_at=T0 + timedelta(seconds=n),
        extra=extra,
    )


def batch(*items: CrawledItem, worker: str = "w1") -> CrawlBatch:
    return CrawlBatch(sender=worker, account_id="acc-1", worker_id=worker, items=items)


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def received(redis: Redis, message: CrawlBatch, at_ms: int | None = None) -> list[Received]:
    """The batch as the Master reads it from the worker's ingest stream: its entry id
    is Redis' clock when it was added (now, unless ``at_ms``)."""
    ms = at_ms if at_ms is not None else await redis_ms(redis)
    stream = f"{message.worker_id}:ingest"
    return [Received(message.worker_id, stream, message, entry_id=f"{ms}-0")]


async def account_keys(redis: Redis, settings: BusSettings) -> set[str]:
    pattern = f"{settings.keys.prefix}account:acc-1*"
    return {k.decode() async for k in redis.scan_iter(pattern)}


async def removal_queued(redis: Redis, settings: BusSettings) -> float | None:
    score: float | None = await redis.zscore(settings.keys.removals, "acc-1")
    return score


@pytest.fixture
async def master(bus: Bus, database_url: str) -> AsyncIterator[Master]:
    """A Master (not running: the test calls its steps) on a fresh database of each
    engine, for each Redis."""
    redis, settings = bus
    m = Master(
        MasterSettings(
            redis_url=settings.redis_url,
            key_prefix=settings.key_prefix,
            master_id="m1",
            database_url=database_url,
        ),
        redis,
    )
    await m.tend_archive()  # as on start: the schema is made
    yield m
    await m.archive.close()


async def with_data(redis: Redis, settings: BusSettings, m: Master) -> Updates:
    """acc-1 on w1 with crawled comments and a DM in the database, and an update w1
    has not ACKed."""
    updates = Updates(redis, settings, "test")
    await updates.store.create(AccountConfig(id="acc-1", platform="sandbox", worker_id="w1"))
    await m.on_batches(await received(redis, batch(comment(1), comment(2), comment(3, "dm"))))
    await updates.change("acc-1", {"name": "x"}, "admin_update")
    assert (await m.archive.counts(["acc-1"]))["acc-1"].comments == 2
    return updates


async def shown(redis: Redis, settings: BusSettings, m: Master) -> Any:
    """What ``hiscrm data acc-1`` shows."""
    return await account_data(redis, settings.keys, m.archive, "acc-1", Filter(limit=10))


async def test_remove_deletes_everything_of_the_account(bus: Bus, master: Master) -> None:
    redis, settings = bus
    keys = settings.keys
    updates = await with_data(redis, settings, master)
    # crawled items went to the database: Redis holds no key of them
    assert await account_keys(redis, settings) == {
        keys.account("acc-1"),
        keys.account_pending("acc-1"),
    }
    (pending,) = await updates.tracker.of_account("acc-1")
    after = await updates.tracker.last_outcome_id()

    removal = await updates.remove("acc-1")

    assert (removal.version, removal.worker_id, removal.cancelled) == (2, "w1", 1)
    assert not removal.data_kept
    # nothing of acc-1 is left in Redis but the queued deletion of its crawled data
    assert await account_keys(redis, settings) == set()
    assert await removal_queued(redis, settings) is not None
    assert not await redis.sismember(keys.accounts(), "acc-1")
    assert not await redis.sismember(keys.worker_accounts("w1"), "acc-1")
    # its pending update ended now, with a reason, instead of being retried
    assert await redis.zscore(keys.pending(), pending.update_id) is None
    outcomes = await updates.tracker.wait_outcomes([pending.update_id], after, 1)
    assert outcomes[pending.update_id].status == "failed"
    assert outcomes[pending.update_id].error == "account removed"

    # the Master's next archive pass deletes its data, then the queued entry
    assert await master.archive.holds("acc-1")
    await master.tend_archive()
    assert (await master.archive.counts(["acc-1"]))["acc-1"] == Counts()
    assert await removal_queued(redis, settings) is None
    assert not (await shown(redis, settings, master)).known

    await updates.store.create(AccountConfig(id="acc-1", platform="sandbox", worker_id="w1"))
    view = await shown(redis, settings, master)
    assert view.exists and view.items == [] and view.counts == Counts()
    assert await updates.tracker.of_account("acc-1") == []


async def test_keep_data_keeps_the_crawled_items(bus: Bus, master: Master) -> None:
    redis, settings = bus
    updates = await with_data(redis, settings, master)

    removal = await updates.remove("acc-1", keep_data=True)
    await master.tend_archive()

    assert removal.data_kept
    assert await removal_queued(redis, settings) is None
    view = await shown(redis, settings, master)
    assert not view.exists and view.known
    assert (view.counts.comments, view.counts.dms) == (2, 1)
    assert [i.item_id for i in view.items] == ["comment-2", "comment-1"]
    assert not await redis.exists(settings.keys.account("acc-1"))


async def test_removing_an_unknown_id_deletes_data_left_behind(bus: Bus, master: Master) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, "test")
    # what an earlier ``remove --keep-data`` left
    await master.archive.store([Arrival(batch(comment(1)), await redis_ms(redis))])
    with pytest.raises(AccountNotFound):
        await updates.remove("acc-1", keep_data=True)
    await master.tend_archive()
    assert await master.archive.holds("acc-1")
    with pytest.raises(AccountNotFound):
        await updates.remove("acc-1")
    await master.tend_archive()
    assert not await master.archive.holds("acc-1")
    assert not (await shown(redis, settings, master)).known
    with pytest.raises(AccountNotFound):
        await updates.remove("nope")
    await master.tend_archive()  # nothing to delete: nothing left queued either
    assert await redis.zcard(settings.keys.removals) == 0


async def test_the_master_refuses_a_batch_for_a_removed_account(bus: Bus, master: Master) -> None:
    redis, settings = bus
    updates = await with_data(redis, settings, master)
    await updates.remove("acc-1")
    await master.tend_archive()

    # the worker's outbox still held a batch: an account with no hash has no owner
    await master.on_batches(await received(redis, batch(comment(7))))

    assert not await master.archive.holds("acc-1")
    assert await master.deadletters.counts() == {"w1:ingest": 1}
    entries: Any = await redis.xrange(settings.keys.deadletter)
    assert entries[-1][1][b"reason"] == b"not_owner"


@pytest.mark.parametrize("archive_pass", ["before", "after"])
async def test_a_batch_accepted_just_before_the_removal_does_not_resurrect_data(
    bus: Bus,
    master: Master,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    archive_pass: str,
) -> None:
    """The batch passed the owner check, then the account was removed; the Master's
    archive pass ran before the batch was stored (the batch is refused) or after (the
    pass deletes it)."""
    redis, settings = bus
    updates = await with_data(redis, settings, master)
    owners = master._owners

    async def owners_then_removal(account_ids: Sequence[str]) -> dict[str, str | None]:
        found = await owners(account_ids)  # w1 owns acc-1: the batch is accepted ...
        await updates.remove("acc-1")  # ... and the operator removes acc-1 right then
        if archive_pass == "before":
            await master.tend_archive()
        return found

    monkeypatch.setattr(master, "_owners", owners_then_removal)
    late = await received(redis, batch(comment(8), comment(9, "dm")))
    with caplog.at_level("INFO", logger="hiscrm_master.service"):
        await master.on_batches(late)
    removed_ms = await redis_ms(redis)  # no earlier than the removal's own mark
    if archive_pass == "before":
        assert "crawl batch from worker w1 dropped: the account was removed" in caplog.text
    else:
        assert await removal_queued(redis, settings) is not None
        await master.tend_archive()

    assert not await master.archive.holds("acc-1")
    assert await account_keys(redis, settings) == set()
    assert await removal_queued(redis, settings) is None

    # added again: its own batches are stored, nothing of the old account comes back
    monkeypatch.setattr(master, "_owners", owners)
    await updates.store.create(AccountConfig(id="acc-1", platform="sandbox", worker_id="w1"))
    await master.on_batches(await received(redis, batch(comment(10)), removed_ms + 1000))
    view = await shown(redis, settings, master)
    assert [i.item_id for i in view.items] == ["comment-10"]
    assert (view.counts.comments, view.counts.dms, view.counts.crawl_runs) == (1, 0, 1)


async def test_a_removal_made_again_during_the_pass_stays_queued(
    bus: Bus, master: Master, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, settings = bus
    updates = await with_data(redis, settings, master)
    await updates.remove("acc-1")
    forget = master.archive.forget

    async def forget_then_removed_again(account_id: str, removed_ms: int) -> Any:
        done = await forget(account_id, removed_ms)
        # added, crawled and removed once more while the pass deleted
        await redis.zadd(settings.keys.removals, {account_id: removed_ms + 1000})
        return done

    monkeypatch.setattr(master.archive, "forget", forget_then_removed_again)
    await master.tend_archive()
    monkeypatch.setattr(master.archive, "forget", forget)
    assert await removal_queued(redis, settings) is not None  # the next pass deletes again
    await master.tend_archive()
    assert await removal_queued(redis, settings) is None


async def test_a_removal_waits_in_redis_while_the_database_is_down(bus: Bus) -> None:
    redis, settings = bus
    down = Master(
        MasterSettings(
            redis_url=settings.redis_url,
            key_prefix=settings.key_prefix,
            master_id="m1",
            database_url=f"postgresql+asyncpg://u:pw@127.0.0.1:{free_port()}/db",
        ),
        redis,
    )
    updates = Updates(redis, settings, "test")
    await updates.store.create(AccountConfig(id="acc-1", platform="sandbox"))
    await updates.remove("acc-1")
    try:
        with pytest.raises(DatabaseUnavailable, match=re.escape("u:***@127.0.0.1")):
            await down.tend_archive()
    finally:
        await down.archive.close()
    assert await removal_queued(redis, settings) is not None
