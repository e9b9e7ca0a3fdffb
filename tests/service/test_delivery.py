"""The delivery contract driven in-process (issue 11's service tier): a Worker and a
Master on the shared bus fixture (fakeredis and a real redis-server), the synthetic
platform, no processes, no polling of another process's Redis writes. Each test calls
the services' own steps (reconcile, apply, on_acks, sweep, placement) and waits on
their results."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.errors import BusUnavailable, InvalidAccountConfig
from hiscrm_bus.limits import MAX_MESSAGE_BYTES, MAX_VERSION
from hiscrm_bus.messages import (
    MAX_ACKS_PER_MESSAGE,
    AccountConfigAcks,
    AccountConfigUpdateAck,
    AckEntry,
    DecodeError,
    decode,
)
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import FIELD, Received
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_worker.service import Worker
from hiscrm_worker.settings import WorkerSettings

Bus = tuple[Redis, BusSettings]


def worker_settings(settings: BusSettings, worker_id: str, tmp_path: Path) -> WorkerSettings:
    return WorkerSettings.model_validate(
        {
            **settings.model_dump(),
            "worker_id": worker_id,
            "platforms": ("synthetic",),
            "data_dir": tmp_path / worker_id,
        }
    )


@pytest.fixture
async def fleet(bus: Bus, tmp_path: Path) -> AsyncIterator[tuple[Master, Worker, Worker]]:
    """A Master and workers w1 and w2 whose task runners run (nothing else of theirs)."""
    redis, settings = bus
    master = Master(
        MasterSettings.model_validate({**settings.model_dump(), "master_id": "m1"}), redis
    )
    w1 = Worker(worker_settings(settings, "w1", tmp_path), redis)
    w2 = Worker(worker_settings(settings, "w2", tmp_path), redis)
    async with anyio.create_task_group() as tg:
        for w in (w1, w2):
            await tg.start(w.runner.run)
            w.tg = tg
            await w.heartbeat()
        yield master, w1, w2
        tg.cancel_scope.cancel()


async def acks_of(redis: Redis, worker: Worker) -> list[Received]:
    """What the worker wrote to its ACK stream, as the Master receives it."""
    entries: Any = await redis.xrange(worker.streams["acks"])
    out = []
    for _id, fields in entries:
        message = decode(fields[FIELD.encode()])
        assert not isinstance(message, DecodeError)
        out.append(Received(worker.id, worker.streams["acks"], message))
    return out


async def add(master: Master, account_id: str, worker_id: str | None) -> None:
    config = AccountConfig(
        id=account_id, platform="synthetic", worker_id=worker_id, monitor_interval_s=60
    )
    await master.store.create(config)


async def settled(master: Master, worker: Worker, count: int) -> None:
    """Accounts acc-0 … acc-<count-1> owned by ``worker``, reconciled there and its ACKs
    resolved by ``master``: nothing pending, every task running its version 1."""
    for n in range(count):
        await add(master, f"acc-{n}", worker.id)
    await worker.reconcile()
    await master.on_acks(await acks_of(worker.redis, worker))


async def test_reconcile_starts_every_owned_account_and_acks_it(fleet, bus: Bus) -> None:
    master, w1, _w2 = fleet
    redis, _settings = bus
    for n in range(3):
        await add(master, f"acc-{n}", "w1")
    await add(master, "other", "w2")
    await w1.reconcile()
    assert sorted(w1.runner.ids()) == ["acc-0", "acc-1", "acc-2"]
    # the reconcile's ACKs travel as one stream entry
    (entry,) = await acks_of(redis, w1)
    assert isinstance(entry.message, AccountConfigAcks)
    assert sorted(a.account_id for a in entry.message.acks) == ["acc-0", "acc-1", "acc-2"]
    assert all(a.ok and a.applied_version == 1 for a in entry.message.acks)
    # a second pass finds nothing behind and says nothing
    await w1.reconcile()
    assert len(await acks_of(redis, w1)) == 1


async def test_a_reconcile_of_many_accounts_acks_them_a_thousand_per_entry(fleet, bus: Bus) -> None:
    master, w1, _w2 = fleet
    redis, _settings = bus
    count = MAX_ACKS_PER_MESSAGE + 5
    for n in range(count):
        await add(master, f"acc-{n:04d}", "w1")
    await w1.reconcile()
    entries = await acks_of(redis, w1)
    assert [len(r.message.acks) for r in entries] == [MAX_ACKS_PER_MESSAGE, 5]  # type: ignore[union-attr]
    # every task is started right behind the reconcile, none lost to the bulk start
    await anyio.wait_all_tasks_blocked()
    states = {w1.runner.get(a).state for a in w1.runner.ids()}  # type: ignore[union-attr]
    assert (len(w1.runner.ids()), states) == (count, {"waiting_login"})
    # the Master resolves them all: each account's pending assignment is closed
    assert await master.tracker.count() == 0  # created behind the tracker's back
    await master.on_acks(entries)
    assert await master.deadletters.counts() == {}


async def test_a_batch_ack_for_an_account_not_its_own_is_refused_alone(fleet, bus: Bus) -> None:
    """A worker's batch is judged entry by entry: the ACK about another worker's account
    is dead-lettered, the rest resolve."""
    master, w1, _w2 = fleet
    redis, _settings = bus
    await add(master, "mine", None)
    await add(master, "theirs", "w2")
    await master.updates.change("mine", {"worker_id": "w1"}, "assignment")
    (pending,) = await master.tracker.of_account("mine")
    entry = AckEntry(
        account_id="mine", applied_version=pending.version, seen_version=pending.version, ok=True
    )
    forged = AckEntry(account_id="theirs", applied_version=9, seen_version=9, ok=True)
    batch = AccountConfigAcks(sender="w1", worker_id="w1", acks=(entry, forged))
    await master.on_acks([Received("w1", w1.streams["acks"], batch)])
    assert await master.tracker.count() == 0
    assert await master.deadletters.counts() == {w1.streams["acks"]: 1}
    ((_id, fields),) = await redis.xrange(master.keys.deadletter)
    assert fields[b"reason"] == b"not_owner" and b'"theirs"' in fields[b"raw"]


async def test_an_update_is_applied_acked_and_resolved(fleet, bus: Bus) -> None:
    master, w1, _w2 = fleet
    redis, _settings = bus
    await add(master, "acc-1", "w1")
    await w1.reconcile()
    _result, sent = await master.updates.change("acc-1", {"name": "shop"}, "admin_update")
    assert sent is not None
    await w1.on_config_update(sent)
    assert w1.runner.get("acc-1").config.name == "shop"  # type: ignore[union-attr]
    await master.on_acks(await acks_of(redis, w1))
    (outcome,) = [
        o for o in await master.tracker.recent_outcomes() if o.update_id == sent.update_id
    ]
    assert (outcome.status, outcome.worker_id) == ("applied", "w1")
    assert await master.tracker.count() == 0


async def test_an_invalid_stored_value_is_rejected_and_the_old_config_kept(fleet, bus: Bus) -> None:
    master, w1, _w2 = fleet
    redis, settings = bus
    await add(master, "acc-1", "w1")
    await w1.reconcile()
    _result, sent = await master.updates.change("acc-1", {"name": "ok"}, "admin_update")
    assert sent is not None
    # poisoned behind the store's back before the worker reads it
    await redis.hset(settings.keys.account("acc-1"), "monitor_interval_s", "soon")
    await w1.on_config_update(sent)
    assert w1.runner.get("acc-1").config.monitor_interval_s == 60  # type: ignore[union-attr]
    await master.on_acks(await acks_of(redis, w1))
    (outcome,) = [
        o for o in await master.tracker.recent_outcomes() if o.update_id == sent.update_id
    ]
    assert outcome.status == "rejected" and "monitor_interval_s" in outcome.error


async def test_an_unacked_update_is_retried_then_failed(fleet, bus: Bus) -> None:
    master, _w1, _w2 = fleet
    await add(master, "acc-1", "w1")
    _result, sent = await master.updates.change("acc-1", {"name": "x"}, "admin_update")
    assert sent is not None
    with anyio.fail_after(20):
        # each pass acts on deadlines kept on Redis' own clock
        while not (await master.store.get("acc-1")).config_stale:
            await master.sweep()
            await anyio.sleep(0.05)
    stats = await master.tracker.stats()
    assert (stats["retried"], stats["failed"]) == (master.settings.max_attempts - 1, 1)
    (outcome,) = await master.tracker.recent_outcomes()
    assert (outcome.update_id, outcome.status) == (sent.update_id, "failed")


async def test_a_backlog_that_never_drains_postpones_retries_for_one_budget_only(
    fleet, bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Retries wait while ACKs are queued unread, but a stream someone keeps full (a
    worker's junk ACKs, faster than reads take them) must not stop every retry and
    failure in the fleet: after one update's retry budget the sweep goes on, said once
    (review finding)."""
    master, _w1, _w2 = fleet
    monkeypatch.setattr(type(master.acks), "backlogged", property(lambda _self: True))
    await add(master, "acc-1", "w1")
    _result, sent = await master.updates.change("acc-1", {"name": "x"}, "admin_update")
    assert sent is not None
    budget = master.settings.ack_timeout_s * master.settings.max_attempts
    started = anyio.current_time()
    with anyio.fail_after(20):
        while not (await master.store.get("acc-1")).config_stale:
            await master.sweep()
            await anyio.sleep(0.05)
    assert anyio.current_time() - started >= budget  # it did wait, one budget
    told = [r for r in caplog.records if "ACK backlog for" in r.getMessage()]
    assert len(told) == 1


async def test_a_dead_workers_accounts_move_to_a_live_one(fleet, bus: Bus) -> None:
    master, w1, w2 = fleet
    redis, settings = bus
    for n in range(2):
        await add(master, f"acc-{n}", "w1")
    await redis.delete(settings.keys.worker("w1"))  # its heartbeat expired
    placed = await master.assigner.run_once()
    assert placed == 2
    for n in range(2):
        assert (await master.store.get(f"acc-{n}")).worker_id == "w2"
    pending = await master.tracker.of_account("acc-0")
    assert [p.worker_id for p in pending] == ["w2"]
    await w2.reconcile()
    await master.on_acks(await acks_of(redis, w2))
    assert await master.tracker.count() == 0
    assert w1.runner.ids() == []


async def test_a_pass_with_nothing_to_place_counts_no_worker_loads(
    fleet, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting every worker's accounts is one command per worker per bucket (64 on a
    cluster): a liveness pass does it only when there is something to place."""
    master, _w1, _w2 = fleet
    counted: list[int] = []
    loads = master.assigner._loads

    async def counting(alive: Any) -> dict[str, int]:
        counted.append(len(alive))
        return await loads(alive)

    monkeypatch.setattr(master.assigner, "_loads", counting)
    await add(master, "acc-0", "w1")
    assert await master.assigner.run_once() == 0
    assert counted == []
    await add(master, "acc-1", None)  # an account no worker owns: now it counts
    assert await master.assigner.run_once() == 1
    assert counted == [2]
    assert (await master.store.get("acc-1")).worker_id == "w2"  # the lighter one


async def test_racing_changes_each_land_once_tracked_and_published(fleet, bus: Bus) -> None:
    """The one-call write path: twenty writers at once on one account each win once
    (a lost race reads again), and each write is recorded and published with it."""
    master, _w1, _w2 = fleet
    redis, settings = bus
    await add(master, "acc-1", "w1")
    results: list[int] = []

    async def write(n: int) -> None:
        result, sent = await master.updates.change("acc-1", {"name": f"n{n}"}, "admin_update")
        assert sent is not None and sent.config_version == result.version
        results.append(result.version)

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(write, n)
    assert sorted(results) == list(range(2, 22))
    assert (await master.store.get("acc-1")).config_version == 21
    pending = await master.tracker.of_account("acc-1")
    assert sorted(p.version for p in pending) == list(range(2, 22))
    assert int((await redis.hgetall(settings.keys.stats()))[b"sent"]) == 20


async def test_a_burst_of_updates_is_read_and_acked_in_bulk_and_each_resolves(
    fleet, bus: Bus
) -> None:
    """A fleet-wide change reaches a worker as a burst: each update is ACKed with its own
    id (an account changed twice in the burst is read once), and the Master closes all."""
    master, w1, _w2 = fleet
    redis, _settings = bus
    await settled(master, w1, 3)
    sent = []
    for account_id, name in (("acc-0", "a"), ("acc-1", "b"), ("acc-0", "c"), ("acc-2", "d")):
        _result, message = await master.updates.change(account_id, {"name": name}, "admin_update")
        assert message is not None
        sent.append(message)
    assert await master.tracker.count() == 4
    reads = 0
    get_each = w1.store.get_each

    async def counted(ids: list[str]) -> list[Any]:
        nonlocal reads
        reads += 1
        return await get_each(ids)

    w1.store.get_each = counted  # type: ignore[method-assign]
    await w1.handle_burst(sent)
    assert reads == 1
    assert [w1.runner.get(a).config.name for a in ("acc-0", "acc-1", "acc-2")] == ["c", "b", "d"]  # type: ignore[union-attr]
    acks = (await acks_of(redis, w1))[1:]  # after the reconcile's batch
    assert [r.message.update_id for r in acks] == [m.update_id for m in sent]  # type: ignore[union-attr]
    await master.on_acks(acks)
    assert await master.tracker.count() == 0
    outcomes = await master.tracker.recent_outcomes()
    assert {o.update_id for o in outcomes if o.status == "applied"} >= {m.update_id for m in sent}


async def test_a_fleet_change_writes_tracks_and_sends_each_account_once(fleet, bus: Bus) -> None:
    """change_many over a mix: owners that stay (one atomic call each), a move, an
    account written since the batch was read, an invalid value and an unowned account;
    results in the batch's order, one tracked update per owned account written."""
    master, _w1, _w2 = fleet
    for account_id, owner in (("stay", "w1"), ("move", "w1"), ("raced", "w2"), ("bad", "w1")):
        await add(master, account_id, owner)
    await add(master, "loose", None)
    selection = await master.updates.selection({"name": "fleet"})
    await master.updates.change("raced", {"name": "someone else"}, "admin_update")
    batch = dict(selection)
    batch["move"] = (selection["move"][0], {"name": "fleet", "worker_id": "w2"})
    batch["bad"] = (selection["bad"][0], {"monitor_interval_s": -1})
    results, sent = await master.updates.change_many(batch, "admin_update")
    by_id = dict(zip(batch, results, strict=True))
    assert isinstance(by_id["bad"], InvalidAccountConfig)
    written = {a: r for a, r in by_id.items() if not isinstance(r, Exception)}
    assert {a: (r.version, r.worker_id) for a, r in written.items()} == {
        "stay": (2, "w1"),
        "move": (2, "w2"),
        "raced": (3, "w2"),
        "loose": (2, None),
    }
    assert sorted(m.account_id for m in sent if m is not None) == ["move", "raced", "stay"]
    for account_id in ("stay", "move", "raced"):
        pending = await master.tracker.of_account(account_id)
        earlier = [2] if account_id == "raced" else []  # someone else's change is tracked too
        assert sorted(p.version for p in pending) == [*earlier, written[account_id].version]
        assert (await master.store.get(account_id)).name == "fleet"
    assert (await master.store.get("bad")).monitor_interval_s == 60


async def test_a_poisoned_version_in_a_burst_costs_only_its_own_account(fleet, bus: Bus) -> None:
    """Versions an ACK cannot carry (-1, 2**64) are rejected in a valid ACK; the other
    updates of the burst are applied and ACKed all the same (review finding)."""
    master, w1, _w2 = fleet
    redis, settings = bus
    await settled(master, w1, 3)
    sent = []
    for n in range(3):
        _r, message = await master.updates.change(f"acc-{n}", {"name": "new"}, "admin_update")
        assert message is not None
        sent.append(message)
    await redis.hset(settings.keys.account("acc-1"), "config_version", str(2**64))
    await w1.handle_burst(sent)
    acks = [r.message for r in (await acks_of(redis, w1))[1:]]
    assert [a.update_id for a in acks] == [m.update_id for m in sent]  # type: ignore[union-attr]
    assert [a.ok for a in acks] == [True, False, True]  # type: ignore[union-attr]
    assert w1.runner.get("acc-0").config.name == "new"  # type: ignore[union-attr]
    await redis.hset(settings.keys.account("acc-1"), "config_version", "-1")
    await w1.handle_burst([sent[1]])  # a negative one is rejected in a valid ACK too
    last = (await acks_of(redis, w1))[-1].message
    assert isinstance(last, AccountConfigUpdateAck)
    assert (last.update_id, last.ok, last.seen_version) == (sent[1].update_id, False, 0)


async def test_a_burst_whose_read_fails_still_acks_what_needed_no_read(fleet, bus: Bus) -> None:
    master, w1, _w2 = fleet
    redis, _settings = bus
    for n in range(2):
        await add(master, f"acc-{n}", "w1")
    await w1.reconcile()
    _r, stale = await master.updates.change("acc-0", {"name": "a"}, "admin_update")
    assert stale is not None
    await w1.on_config_updates([stale])  # applied: the resend below needs no read
    _r, fresh = await master.updates.change("acc-1", {"name": "b"}, "admin_update")
    assert fresh is not None

    async def unreachable(_ids: list[str]) -> list[Any]:
        raise BusUnavailable("Redis is unreachable: test")

    w1.store.get_each = unreachable  # type: ignore[method-assign]
    await w1.handle_burst([stale, fresh])  # does not raise: the Master re-sends
    acks = [r.message for r in await acks_of(redis, w1)]
    assert [a.update_id for a in acks if isinstance(a, AccountConfigUpdateAck)] == [
        stale.update_id,
        stale.update_id,
    ]


async def test_long_errors_split_a_batch_of_acks_under_the_message_bound(fleet, bus: Bus) -> None:
    _master, w1, _w2 = fleet
    redis, _settings = bus
    entries = [
        AckEntry(
            account_id=f"acc-{n}", applied_version=1, seen_version=2, ok=False, error="\\x01" * 500
        )
        for n in range(1000)
    ]
    await w1._ack_many(entries)
    raw = await redis.xrange(w1.streams["acks"])
    assert len(raw) > 1
    assert all(len(fields[FIELD.encode()]) < MAX_MESSAGE_BYTES for _id, fields in raw)
    decoded = [decode(fields[FIELD.encode()]) for _id, fields in raw]
    assert sum(len(m.acks) for m in decoded) == 1000  # type: ignore[union-attr]


async def test_a_fleet_change_refuses_a_final_version_alone(fleet, bus: Bus) -> None:
    master, _w1, _w2 = fleet
    redis, settings = bus
    for account_id in ("ok", "final"):
        await add(master, account_id, "w1")
    await redis.hset(settings.keys.account("final"), "config_version", str(2**63 - 1))
    batch = await master.updates.selection({"name": "fleet"})
    results, sent = await master.updates.change_many(batch, "admin_update")
    by_id = dict(zip(batch, results, strict=True))
    assert isinstance(by_id["final"], InvalidAccountConfig)
    assert not isinstance(by_id["ok"], Exception) and by_id["ok"].version == 2
    assert [m.account_id for m in sent if m is not None] == ["ok"]


async def test_a_version_that_went_back_is_reloaded_not_ignored(fleet, bus: Bus) -> None:
    """Redis lost writes the worker had applied (restarted from an older copy): the
    stored config runs again, and the next write, reusing a version the worker had
    seen, is applied rather than taken for a duplicate."""
    master, w1, _w2 = fleet
    redis, settings = bus
    await add(master, "acc-1", "w1")
    await w1.reconcile()
    for name in ("b", "c"):
        _r, sent = await master.updates.change("acc-1", {"name": name}, "admin_update")
        assert sent is not None
        await w1.on_config_update(sent)
    assert w1.applied["acc-1"] == 3
    # what an older copy of the hash says: version 1, the first name
    key = settings.keys.account("acc-1")
    await redis.hset(key, mapping={"config_version": "1", "name": ""})
    await w1.reconcile()
    assert (w1.applied["acc-1"], w1.runner.get("acc-1").config.name) == (1, "")  # type: ignore[union-attr]
    _r, sent = await master.updates.change("acc-1", {"name": "after"}, "admin_update")
    assert sent is not None and sent.config_version == 2  # a version the worker had seen
    await w1.on_config_update(sent)
    assert w1.runner.get("acc-1").config.name == "after"  # type: ignore[union-attr]


async def test_a_reconcile_read_overtaken_by_an_update_does_not_roll_it_back(
    fleet, bus: Bus
) -> None:
    """An update applied while a reconcile's read was on its way is newer than that
    read: the reconcile leaves it alone (it must not take its older read for lost writes)."""
    master, w1, _w2 = fleet
    await add(master, "acc-1", "w1")
    await w1.reconcile()
    await master.updates.change("acc-1", {"name": "v2"}, "admin_update")  # not delivered
    get_each = w1.store.get_each
    overtaken = False

    async def read_then_overtaken(ids: list[str]) -> list[Any]:
        nonlocal overtaken
        raws = await get_each(ids)
        if not overtaken:  # the reconcile's read is back; an update lands before it is used
            overtaken = True
            _r, sent = await master.updates.change("acc-1", {"name": "v3"}, "admin_update")
            assert sent is not None
            await w1.on_config_update(sent)
        return raws

    w1.store.get_each = read_then_overtaken  # type: ignore[method-assign]
    await w1.reconcile()
    assert overtaken
    assert (w1.applied["acc-1"], w1.runner.get("acc-1").config.name) == (3, "v3")  # type: ignore[union-attr]


async def wrong_type(redis: Redis, settings: BusSettings, account_id: str) -> dict[bytes, bytes]:
    """Overwrite the account's hash with a string (WRONGTYPE for every read); returns
    the hash as it was."""
    key = settings.keys.account(account_id)
    stored: dict[bytes, bytes] = await redis.hgetall(key)  # type: ignore[misc]
    await redis.delete(key)
    await redis.set(key, "x")
    return stored


@pytest.mark.parametrize("poison", ["abc", "-5", str(2**64), "wrongtype"])
async def test_a_poisoned_account_is_rejected_once_not_on_every_reconcile(
    fleet, bus: Bus, caplog: pytest.LogCaptureFixture, poison: str
) -> None:
    """A version no one can use (or a key of another type) is said once: one error line,
    one rejecting ACK; the pass after stays quiet and the task runs on. A version the
    Master writes afterwards is read and applied at once (review finding)."""
    master, w1, _w2 = fleet
    redis, settings = bus
    await settled(master, w1, 2)
    key = settings.keys.account("acc-1")
    if poison == "wrongtype":
        stored = await wrong_type(redis, settings, "acc-1")
    else:
        await redis.hset(key, "config_version", poison)
    caplog.clear()
    for _ in range(5):
        await w1.reconcile()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "acc-1" in errors[0].getMessage()
    (rejecting,) = [r.message for r in (await acks_of(redis, w1))[1:]]
    assert isinstance(rejecting, AccountConfigAcks)
    assert [(a.account_id, a.ok) for a in rejecting.acks] == [("acc-1", False)]
    assert w1.runner.get("acc-1").config.config_version == 1  # type: ignore[union-attr]
    # the Master writes a good version: the next pass reads and applies it
    if poison == "wrongtype":
        await redis.delete(key)
        await redis.hset(key, mapping={**stored, b"config_version": b"7", b"name": b"fixed"})
    else:
        await redis.hset(key, mapping={"config_version": "7", "name": "fixed"})
    await w1.reconcile()
    task = w1.runner.get("acc-1")
    assert task is not None and (task.config.config_version, task.config.name) == (7, "fixed")


async def test_accounts_that_left_the_worker_leave_nothing_behind(fleet, bus: Bus) -> None:
    """A worker keeps per-account state only for the accounts it has: accounts moved
    away (told or not) and then removed cost it nothing afterwards (review finding)."""
    master, w1, w2 = fleet
    await settled(master, w1, 4)
    for n in range(4):
        _r, sent = await master.updates.change(f"acc-{n}", {"worker_id": "w2"}, "assignment")
        assert sent is not None
        if n < 2:  # the old owner hears of two moves; reconcile finds the others
            notice = sent.model_copy(update={"reason": "unassignment"})
            await w1.on_config_update(notice)
    await w1.reconcile()
    await w2.reconcile()
    assert (w1.runner.ids(), sorted(w2.runner.ids())) == ([], [f"acc-{n}" for n in range(4)])
    for n in range(4):
        await master.updates.remove(f"acc-{n}")
    await w1.reconcile()
    await w2.reconcile()
    for w in (w1, w2):
        assert (w.runner.ids(), w.applied, w.rejected, dict(w._locks)) == ([], {}, {}, {})


async def test_a_rejected_account_taken_away_unheard_is_forgotten(fleet, bus: Bus) -> None:
    """An account rejected here, then removed while we did not hear of it, is dropped
    by the next reconcile; a lock someone holds is kept until it is free."""
    master, w1, _w2 = fleet
    await master.store.create(AccountConfig(id="elsewhere", platform="douyin", worker_id="w1"))
    await w1.reconcile()  # w1 has no douyin: rejected, never run
    assert "elsewhere" in w1.rejected and w1.runner.ids() == []
    await master.updates.remove("elsewhere")  # the notice is lost
    lock = w1._locks["elsewhere"]
    async with lock:  # an update handler mid-way
        await w1.reconcile()
        assert w1._locks.get("elsewhere") is lock
    await w1.reconcile()
    assert (w1.applied, w1.rejected, dict(w1._locks)) == ({}, {}, {})


async def test_the_assigner_forgets_accounts_it_no_longer_has_to_place(fleet, bus: Bus) -> None:
    """Accounts that could not be placed (no worker for their platform, an invalid
    hash) are kept in mind only while they wait: once removed they cost nothing."""
    master, _w1, _w2 = fleet
    redis, settings = bus
    await master.store.create(AccountConfig(id="nowhere", platform="douyin", worker_id=None))
    await add(master, "broken", None)
    await redis.hset(settings.keys.account("broken"), "monitor_interval_s", "soon")
    assert await master.assigner.run_once() == 0
    assigner = master.assigner
    assert (assigner._unplaceable, assigner._invalid_logged) == ({"nowhere"}, {"broken"})
    for account_id in ("nowhere", "broken"):
        await master.updates.remove(account_id)
    await master.assigner.run_once()
    assert (assigner._unplaceable, assigner._invalid_logged) == (set(), set())


async def test_an_account_at_the_final_version_is_told_once_and_not_placed(
    fleet, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """Placing means a versioned write; an account whose version cannot go higher is
    refused that write (nothing changes) and the assigner says so once, not per pass."""
    master, _w1, _w2 = fleet
    redis, settings = bus
    await add(master, "final", None)
    await redis.hset(settings.keys.account("final"), "config_version", str(MAX_VERSION))
    with caplog.at_level(logging.ERROR, logger="hiscrm_master.assignment"):
        for _ in range(3):
            assert await master.assigner.run_once() == 0
    told = [r.getMessage() for r in caplog.records if "final" in r.getMessage()]
    assert len(told) == 1 and "cannot be placed" in told[0], told
    assert await redis.hget(settings.keys.account("final"), "worker_id") in (None, b"")


async def test_a_hash_without_a_version_is_read_once_not_on_every_reconcile(
    fleet, bus: Bus
) -> None:
    """A hash that lost its ``config_version`` (hand-edited) is valid at version 0: the
    worker applies it once; later passes neither read nor ACK it again, and a version
    written afterwards is applied at once."""
    master, w1, _w2 = fleet
    redis, settings = bus
    await settled(master, w1, 2)
    key = settings.keys.account("acc-1")
    await redis.hdel(key, "config_version")
    before = len(await acks_of(redis, w1))
    for _ in range(5):
        await w1.reconcile()
    assert len(await acks_of(redis, w1)) - before == 1  # the one pass that read it
    await redis.hset(key, mapping={"config_version": "7", "name": "fixed"})
    await w1.reconcile()
    task = w1.runner.get("acc-1")
    assert task is not None and (task.config.config_version, task.config.name) == (7, "fixed")


async def test_acks_the_stream_refuses_are_told_once_and_kept_in_order(
    fleet, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """While the ACK stream refuses writes (its key holds another type), the worker's
    ACKs wait in its outbox, in order, with one warning, not one per update; they are
    written once the stream takes writes again (review finding)."""
    master, w1, _w2 = fleet
    redis, _settings = bus
    await settled(master, w1, 1)
    stream = w1.streams["acks"]
    await redis.delete(stream)
    await redis.set(stream, "not a stream")
    sent = []
    with caplog.at_level(logging.WARNING, logger="hiscrm_worker.service"):
        for n in range(5):
            _result, update = await master.updates.change(
                "acc-0", {"name": f"n{n}"}, "admin_update"
            )
            assert update is not None
            await w1.on_config_update(update)
            sent.append(update.update_id)
    told = [r for r in caplog.records if "ACK message(s) queued" in r.getMessage()]
    assert len(told) == 1
    await redis.delete(stream)
    async with anyio.create_task_group() as tg:
        tg.start_soon(w1.outbox.run)
        with anyio.fail_after(10):
            await w1.outbox.settled()
        tg.cancel_scope.cancel()
    acked = [r.message.update_id for r in await acks_of(redis, w1)]  # type: ignore[attr-defined]
    assert acked == sent
