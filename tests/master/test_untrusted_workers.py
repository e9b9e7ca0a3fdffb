"""The Master holds up against what a worker may legitimately write: its own streams,
its registry hash and one entry in the worker index. Nothing a worker writes there may
make the Master act for it on accounts it does not own, stop placing accounts, or
create keys and log lines without bound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.deadletter import REPORTS_PER_MINUTE
from hiscrm_bus.keys import STREAM_KINDS as KINDS
from hiscrm_bus.messages import AccountConfigUpdateAck, DeadLetterReport, Message, TaskStatus
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import Received, append
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings

Bus = tuple[Redis, BusSettings]


@pytest.fixture
async def master(bus: Bus) -> AsyncIterator[Master]:
    redis, settings = bus
    master = Master(
        MasterSettings.model_validate({**settings.model_dump(), "master_id": "m1"}), redis
    )
    yield master
    await master.archive.close()


def read(master: Master, kind: Any, *messages: Message, worker: str = "w1") -> list[Received]:
    stream = master.keys.worker_stream(worker, kind)
    return [Received(worker, stream, m, f"1-{n}") for n, m in enumerate(messages)]


async def dead_letters(redis: Redis, settings: BusSettings) -> list[str]:
    entries = await redis.xrange(settings.keys.deadletter)
    return [fields[b"reason"].decode() for _id, fields in entries]


async def test_an_ack_for_an_unowned_account_is_refused_and_keeps_it_stale(
    master: Master, bus: Bus
) -> None:
    redis, settings = bus
    await master.store.create(AccountConfig(id="acc-1", platform="synthetic"))
    await master.store.set_stale("acc-1", True)
    ack = AccountConfigUpdateAck(
        sender="w1", account_id="acc-1", worker_id="w1", applied_version=1, seen_version=1, ok=True
    )
    await master.on_acks(read(master, "acks", ack))
    assert (await master.store.get("acc-1")).config_stale
    assert await dead_letters(redis, settings) == ["not_owner"]
    # and for no account at all: refused the same way, no hash created
    other = ack.model_copy(update={"account_id": "acc-9"})
    await master.on_acks(read(master, "acks", other))
    assert await dead_letters(redis, settings) == ["not_owner", "not_owner"]
    assert not await redis.exists(settings.keys.account("acc-9"))


async def heartbeat(redis: Redis, settings: BusSettings, worker_id: str) -> None:
    info = WorkerInfo(id=worker_id, platforms=("synthetic",), capacity=50)
    await WorkerRegistry(redis, settings.keys).heartbeat(info, ttl_s=60)


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_an_index_member_that_is_no_worker_id_is_ignored_and_removed(
    master: Master, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    redis, settings = bus
    keys = settings.keys
    await heartbeat(redis, settings, "w1")
    # what w1's user may write: a far-future index entry and a registry-looking hash
    fake = f"w1:out:{keys.prefix}"  # (a name of this test's own: told once per process)
    await redis.zadd(keys.workers, {fake: 9_999_999_999})
    await redis.hset(keys.worker(fake), mapping={"capacity": "50", "platforms": '["synthetic"]'})
    for n in (1, 2, 3):
        await master.store.create(AccountConfig(id=f"acc-{n}", platform="synthetic"))
    assert await master.assigner.run_once() == 3
    assert {(await master.store.get(f"acc-{n}")).worker_id for n in (1, 2, 3)} == {"w1"}
    assert await redis.zrange(keys.workers, 0, -1) == [b"w1"]
    await redis.zadd(keys.workers, {fake: 9_999_999_999})  # again: removed, told once
    await master.assigner.run_once()
    alive, dead = await master.assigner.registry.all()
    assert ([w.id for w in alive], dead) == (["w1"], [])
    assert len(lines(caplog, "is not a worker id")) == 1
    assert not lines(caplog, "cannot be placed")


async def test_a_worker_whose_account_set_is_another_type_only_gets_no_account(
    master: Master, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    redis, settings = bus
    keys = settings.keys
    await heartbeat(redis, settings, "w1")
    await heartbeat(redis, settings, "w2")
    await redis.set(keys.worker_accounts("w2"), "not a set")  # SCARD: WRONGTYPE
    for n in (1, 2):
        await master.store.create(AccountConfig(id=f"acc-{n}", platform="synthetic"))
    assert await master.assigner.run_once() == 2
    assert {(await master.store.get(f"acc-{n}")).worker_id for n in (1, 2)} == {"w1"}
    await master.store.create(AccountConfig(id="acc-3", platform="synthetic"))
    assert await master.assigner.run_once() == 1
    assert len(lines(caplog, "worker w2 gets no account")) == 1


async def test_a_flooded_index_creates_no_keys_and_is_worked_off_in_bounded_passes(
    master: Master, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    redis, settings = bus
    keys = settings.keys
    await heartbeat(redis, settings, "w1")
    fakes = [f"fake{n}" for n in range(1000)]
    await redis.zadd(keys.workers, dict.fromkeys(fakes, 1))
    await master.store.create(AccountConfig(id="acc-1", platform="synthetic", worker_id="fake7"))
    for reader in (master.acks, master.events, master.ingest):
        await reader.ensure_group()
    # the live worker's streams and group exist; none for names only in the index
    groups = await redis.xinfo_groups(keys.worker_stream("w1", "events"))
    assert [g["name"] for g in groups] == [master.settings.consumer_group.encode()]
    made = [await redis.exists(keys.worker_stream(f, k)) for f in fakes[:50] for k in KINDS]
    assert sum(made) == 0
    passes = 0
    while len(await redis.zrange(keys.workers, 0, -1)) > 1:
        await master.assigner.run_once()
        passes += 1
        assert passes <= 10
    assert passes > 1  # bounded: one pass does not take all 1,000
    assert (await master.store.get("acc-1")).worker_id == "w1"  # fake7's account moved
    offline = lines(caplog, "offline (heartbeat expired)")
    assert len(offline) == passes
    assert all("more" in line for line in offline)


async def test_a_worker_flooding_dead_letter_reports_evicts_nothing_and_grows_no_count(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    redis, settings = bus
    settings = settings.model_copy(update={"deadletter_maxlen": 10})
    master = Master(
        MasterSettings.model_validate({**settings.model_dump(), "master_id": "m1"}), redis
    )
    keys = settings.keys
    try:
        ack = AccountConfigUpdateAck(
            sender="w1",
            account_id="acc-9",
            worker_id="w1",
            applied_version=1,
            seen_version=1,
            ok=True,
        )
        await master.on_acks(read(master, "acks", ack))  # the Master's own refusal
        reports = [
            DeadLetterReport(
                sender="w1", worker_id="w1", source=f"src-{n}", reason="junk", raw="x", raw_len=1
            )
            for n in range(500)
        ]
        for n in range(0, 500, 100):
            await master.on_events(read(master, "events", *reports[n : n + 100]))
    finally:
        await master.archive.close()
    assert await dead_letters(redis, settings) == ["not_owner"]
    assert await master.deadletters.counts() == {
        keys.worker_stream("w1", "acks"): 1,
        keys.control("w1"): 500,
    }
    assert await redis.xlen(keys.deadletter_reported) <= REPORTS_PER_MINUTE
    assert len(lines(caplog, "the rest of the minute's are counted, not kept")) == 1


async def test_acks_and_events_are_read_a_few_at_a_time_and_handled_acks_trimmed(
    bus: Bus, tmp_path: Path
) -> None:
    redis, settings = bus
    keys = settings.keys
    master = Master(
        MasterSettings(
            redis_url=settings.redis_url,
            key_prefix=settings.key_prefix,
            master_id="m1",
            database_url=f"sqlite+aiosqlite:///{tmp_path}/hiscrm.db",
        ),
        redis,
    )
    try:
        await heartbeat(redis, settings, "w1")
        events = keys.worker_stream("w1", "events")
        for n in range(30):
            status = TaskStatus(
                sender="w1", account_id="acc-1", worker_id="w1", state="running", config_version=n
            )
            await append(redis, events, status, 1000)
        got: list[int] = []
        done = anyio.Event()

        async def handler(received: list[Received]) -> None:
            got.append(len(received))
            if sum(got) >= 30:
                done.set()

        acks = keys.worker_stream("w1", "acks")
        for n in range(30):
            await append(redis, acks, status.model_copy(update={"config_version": n}), 1000)
        acked = anyio.Event()

        async def ack_handler(received: list[Received]) -> None:
            got.append(len(received))
            if sum(got) >= 60:
                acked.set()

        async with anyio.create_task_group() as tg:
            await tg.start(master.events.run_received, handler)
            with anyio.fail_after(10):
                await done.wait()
            await tg.start(master.acks.run_received, ack_handler)
            with anyio.fail_after(10):
                await acked.wait()
            tg.cancel_scope.cancel()
        assert max(got) <= 10  # a read holds at most a few (possibly large) entries
        await master.tend_archive()
        assert await redis.xlen(acks) == 0  # handled: of no use any more
        # events stay (the worker caps them): a login's followers read them after the
        # Master has handled them, from a cursor (review finding)
        assert await redis.xlen(events) == 30
    finally:
        await master.archive.close()
