"""The pending tracker: every recorded update ends in exactly one recorded outcome."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import anyio
from redis.asyncio import Redis

from hiscrm_bus.connection import make_client
from hiscrm_bus.messages import AccountConfigUpdate, AccountConfigUpdateAck, new_id
from hiscrm_bus.pending import Outcome, PendingUpdate, Sweep
from hiscrm_bus.pending import PendingTracker as _Tracker
from hiscrm_bus.settings import BusSettings
from tests.conftest import fast_settings
from tests.redis_server import RedisServer

Bus = tuple[Redis, BusSettings]


class PendingTracker(_Tracker):
    """The tracker, with each update's account owned by the worker it was sent to (as
    the Master's writes leave it): only an account's owner may resolve its updates."""

    async def _own(self, account_id: str, worker_id: str) -> None:
        await self.redis.hset(self.keys.account(account_id), "worker_id", worker_id)

    async def record(self, update: AccountConfigUpdate, worker_id: str) -> None:
        await self._own(update.account_id, worker_id)
        await super().record(update, worker_id)

    async def record_many(
        self, updates: Sequence[tuple[AccountConfigUpdate, str]], pipe: Any = None
    ) -> None:
        for update, worker_id in updates:
            await self._own(update.account_id, worker_id)
        await super().record_many(updates, pipe)

    async def retarget(self, update: PendingUpdate, worker_id: str) -> None:
        await self._own(update.account_id, worker_id)
        await super().retarget(update, worker_id)


def make_update(
    account: str = "acc-1", version: int = 1, update_id: str | None = None
) -> AccountConfigUpdate:
    return AccountConfigUpdate(
        sender="master-1",
        update_id=update_id or new_id(),
        account_id=account,
        config_version=version,
        reason="admin_update",
        updated_fields=("platform_user_id",),
    )


def make_ack(
    account: str = "acc-1",
    worker: str = "w1",
    applied: int = 1,
    *,
    seen: int | None = None,
    ok: bool = True,
    error: str | None = None,
) -> AccountConfigUpdateAck:
    return AccountConfigUpdateAck(
        sender=worker,
        account_id=account,
        worker_id=worker,
        applied_version=applied,
        seen_version=applied if seen is None else seen,
        ok=ok,
        error=error,
    )


def tuned(settings: BusSettings, **changes: Any) -> BusSettings:
    return settings.model_copy(update=changes)


async def sweep_until(tracker: PendingTracker, done: Any, timeout_s: float = 5) -> Sweep:
    """Sweep until ``done(sweep)``. Deadlines are a clock, not an event, so this polls;
    fail_after bounds it."""
    with anyio.fail_after(timeout_s):
        while True:
            result = await tracker.sweep()
            if done(result):
                return result
            await anyio.sleep(0.005)


async def all_outcomes(redis: Redis, settings: BusSettings) -> list[Outcome]:
    entries = await redis.xrange(settings.keys.outcomes())
    return [Outcome.from_fields(fields) for _id, fields in entries]


async def redis_now_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


# -- resolving by ACK -------------------------------------------------------------------


async def test_record_then_ack_resolves_as_applied_with_latency(bus: Bus) -> None:
    redis, settings = bus
    tracker = PendingTracker(redis, settings)
    before = await tracker.last_outcome_id()
    update = make_update(version=3)
    await tracker.record(update, "w1")

    pending = await tracker.get(update.update_id, update.account_id)
    assert pending is not None
    assert (pending.status, pending.attempts, pending.worker_id, pending.version) == (
        "pending",
        1,
        "w1",
        3,
    )
    assert pending.fields == ("platform_user_id",)
    assert pending.deadline_ms - pending.created_at_ms == int(settings.ack_timeout_s * 1000)
    assert await tracker.count() == 1
    assert [u.update_id for u in await tracker.of_account("acc-1")] == [update.update_id]

    closed = await tracker.resolve(make_ack(applied=4))
    assert len(closed) == 1
    update_id, status, latency = closed[0]
    assert (update_id, status) == (update.update_id, "applied")
    assert latency >= 0

    done = await tracker.get(update.update_id, update.account_id)
    assert done is not None
    assert (done.status, done.latency_ms, done.error) == ("applied", latency, "")
    assert await tracker.count() == 0
    assert await tracker.of_account("acc-1") == []
    assert await tracker.stats() == {"sent": 1, "applied": 1}

    outcomes = await tracker.wait_outcomes([update.update_id], before, timeout_s=2)
    outcome = outcomes[update.update_id]
    assert (outcome.status, outcome.account_id, outcome.worker_id, outcome.version) == (
        "applied",
        "acc-1",
        "w1",
        3,
    )
    assert (outcome.attempts, outcome.latency_ms, outcome.reason) == (1, latency, "admin_update")


async def test_latency_is_measured_from_when_the_update_was_recorded(bus: Bus) -> None:
    redis, settings = bus
    tracker = PendingTracker(redis, settings)
    update = make_update()
    await tracker.record(update, "w1")
    # pretend the update was recorded 1.5 s ago rather than waiting that long
    key = settings.keys.update(update.update_id)
    created_us = int(await redis.hget(key, "created_at_us"))
    await redis.hset(key, "created_at_us", created_us - 1_500_000)
    [(_id, _status, latency)] = await tracker.resolve(make_ack(applied=1))
    assert 1500 <= latency < 1500 + 5000


async def test_a_second_ack_changes_nothing(bus: Bus) -> None:
    redis, settings = bus
    tracker = PendingTracker(redis, settings)
    update = make_update()
    await tracker.record(update, "w1")
    assert len(await tracker.resolve(make_ack(applied=1))) == 1
    assert await tracker.resolve(make_ack(applied=1)) == []
    assert await tracker.resolve(make_ack(applied=7)) == []
    assert [o.update_id for o in await all_outcomes(redis, settings)] == [update.update_id]
    assert (await tracker.stats())["applied"] == 1


async def test_one_ack_resolves_every_covered_version_and_no_newer(bus: Bus) -> None:
    redis, settings = bus
    tracker = PendingTracker(redis, settings)
    updates = {v: make_update(version=v) for v in (3, 4, 5, 6)}
    await tracker.record_many([(u, "w1") for u in updates.values()])
    assert await tracker.count() == 4

    closed = await tracker.resolve(make_ack(applied=5))
    assert {c[0] for c in closed} == {updates[v].update_id for v in (3, 4, 5)}
    assert {c[1] for c in closed} == {"applied"}

    assert [u.update_id for u in await tracker.of_account("acc-1")] == [updates[6].update_id]
    still = await tracker.get(updates[6].update_id, updates[6].account_id)
    assert still is not None
    assert still.status == "pending"
    assert await tracker.count() == 1


async def test_stale_ack_does_not_resolve(bus: Bus) -> None:
    tracker = PendingTracker(*bus)
    update = make_update(version=4)
    await tracker.record(update, "w1")
    assert await tracker.resolve(make_ack(applied=3)) == []
    assert await tracker.count() == 1


async def test_ack_for_another_account_does_not_resolve(bus: Bus) -> None:
    tracker = PendingTracker(*bus)
    await tracker.record(make_update(account="acc-1", version=1), "w1")
    assert await tracker.resolve(make_ack(account="acc-2", applied=9)) == []
    assert await tracker.count() == 1


async def test_ack_from_another_worker_does_not_resolve_until_retargeted(bus: Bus) -> None:
    tracker = PendingTracker(*bus)
    update = make_update(version=2)
    await tracker.record(update, "w1")

    assert await tracker.resolve(make_ack(worker="w2", applied=2)) == []
    pending = await tracker.get(update.update_id, update.account_id)
    assert pending is not None
    assert pending.status == "pending"
    assert await tracker.count() == 1

    # the account moved to w2: now w2's ACK is the one that counts, and w1's is not
    await tracker.retarget(pending, "w2")
    assert await tracker.resolve(make_ack(worker="w1", applied=2)) == []
    [(update_id, status, _latency)] = await tracker.resolve(make_ack(worker="w2", applied=2))
    assert (update_id, status) == (update.update_id, "applied")


async def test_rejecting_ack_resolves_as_rejected_with_the_error(bus: Bus) -> None:
    redis, settings = bus
    tracker = PendingTracker(redis, settings)
    rejected = make_update(version=4)
    newer = make_update(version=5)
    await tracker.record(rejected, "w1")
    await tracker.record(newer, "w1")
    before = await tracker.last_outcome_id()

    ack = make_ack(applied=3, seen=4, ok=False, error="monitor_interval_s: must be > 0")
    [(update_id, status, _latency)] = await tracker.resolve(ack)
    assert (update_id, status) == (rejected.update_id, "rejected")

    done = await tracker.get(rejected.update_id, rejected.account_id)
    assert done is not None
    assert (done.status, done.error) == ("rejected", "monitor_interval_s: must be > 0")
    outcome = (await tracker.wait_outcomes([rejected.update_id], before, 2))[rejected.update_id]
    assert (outcome.status, outcome.error) == ("rejected", "monitor_interval_s: must be > 0")
    assert (await tracker.stats()).get("rejected") == 1
    # the rejection was of version 4 only; version 5 still waits for its own ACK
    assert [u.update_id for u in await tracker.of_account("acc-1")] == [newer.update_id]


# -- deadlines, retries, failure --------------------------------------------------------


async def test_nothing_is_swept_before_its_deadline(bus: Bus) -> None:
    redis, settings = bus
    tracker = PendingTracker(redis, tuned(settings, ack_timeout_s=30))
    await tracker.record(make_update(), "w1")
    assert await tracker.sweep() == Sweep([], [])
    assert await tracker.count() == 1


async def test_unacked_update_is_retried_then_failed_with_one_outcome(bus: Bus) -> None:
    redis, settings = bus
    settings = tuned(settings, ack_timeout_s=0.01, retry_backoff=1.5, max_attempts=3)
    tracker = PendingTracker(redis, settings)
    before = await tracker.last_outcome_id()
    update = make_update(version=2)
    await tracker.record(update, "w1")
    first = await tracker.get(update.update_id, update.account_id)
    assert first is not None

    retry = await sweep_until(tracker, lambda s: s.retry or s.failed)
    assert retry.failed == []
    [again] = retry.retry
    assert (again.update_id, again.attempts, again.status) == (update.update_id, 2, "pending")
    assert again.deadline_ms > first.deadline_ms
    assert (await tracker.stats()).get("retried") == 1

    retry = await sweep_until(tracker, lambda s: s.retry or s.failed)
    assert [(u.update_id, u.attempts) for u in retry.retry] == [(update.update_id, 3)]

    final = await sweep_until(tracker, lambda s: s.retry or s.failed)
    assert final.retry == []
    [failed] = final.failed
    assert (failed.update_id, failed.status, failed.attempts) == (update.update_id, "failed", 3)
    assert failed.error == "no ACK after 3 attempts"

    assert await tracker.count() == 0
    assert await tracker.of_account("acc-1") == []
    assert await tracker.stats() == {"sent": 1, "retried": 2, "failed": 1}
    outcome = (await tracker.wait_outcomes([update.update_id], before, 2))[update.update_id]
    assert (outcome.status, outcome.attempts, outcome.error) == (
        "failed",
        3,
        "no ACK after 3 attempts",
    )
    # a late ACK after giving up records nothing more
    assert await tracker.resolve(make_ack(applied=2)) == []
    assert await tracker.sweep() == Sweep([], [])
    assert [o.update_id for o in await all_outcomes(redis, settings)] == [update.update_id]


async def test_ack_after_a_retry_is_applied_with_the_attempt_count(bus: Bus) -> None:
    redis, settings = bus
    settings = tuned(settings, ack_timeout_s=0.01, max_attempts=5)
    tracker = PendingTracker(redis, settings)
    before = await tracker.last_outcome_id()
    update = make_update()
    await tracker.record(update, "w1")
    await sweep_until(tracker, lambda s: s.retry)
    [(_id, status, _latency)] = await tracker.resolve(make_ack(applied=1))
    assert status == "applied"
    outcome = (await tracker.wait_outcomes([update.update_id], before, 2))[update.update_id]
    assert (outcome.status, outcome.attempts) == ("applied", 2)


async def test_retry_deadline_grows_by_the_backoff_factor(bus: Bus) -> None:
    redis, settings = bus
    settings = tuned(settings, ack_timeout_s=2, retry_backoff=2, max_attempts=4)
    tracker = PendingTracker(redis, settings)
    update = make_update()
    await tracker.record(update, "w1")
    for attempts, wait_ms in ((2, 4000), (3, 8000)):
        # expire the deadline now instead of waiting seconds for it
        await redis.zadd(settings.keys.pending(), {update.update_id: 0})
        swept = await tracker.sweep()
        now = await redis_now_ms(redis)
        [again] = swept.retry
        assert again.attempts == attempts
        assert wait_ms - 1000 <= again.deadline_ms - now <= wait_ms
        assert await redis.zscore(settings.keys.pending(), update.update_id) == again.deadline_ms


async def test_sweep_takes_at_most_limit_updates(bus: Bus) -> None:
    redis, settings = bus
    tracker = PendingTracker(redis, tuned(settings, ack_timeout_s=30))
    updates = [make_update(account=f"a{i}") for i in range(7)]
    await tracker.record_many([(u, "w1") for u in updates])
    await redis.zadd(settings.keys.pending(), {u.update_id: 0 for u in updates})
    first = await tracker.sweep(limit=3)
    second = await tracker.sweep(limit=10)
    assert len(first.retry) == 3
    assert len(second.retry) == 4
    assert {u.update_id for u in first.retry + second.retry} == {u.update_id for u in updates}


# -- waiting for outcomes ---------------------------------------------------------------


async def test_wait_outcomes_returns_only_outcomes_after_the_marker(bus: Bus) -> None:
    redis, settings = bus
    tracker = PendingTracker(redis, settings)
    old = make_update(account="a", version=1)
    await tracker.record(old, "w1")
    await tracker.resolve(make_ack(account="a", applied=1))

    marker = await tracker.last_outcome_id()
    assert marker != "0-0"
    new = make_update(account="b", version=1)
    await tracker.record(new, "w1")
    await tracker.resolve(make_ack(account="b", applied=1))

    found = await tracker.wait_outcomes([old.update_id, new.update_id], marker, timeout_s=0.5)
    assert set(found) == {new.update_id}
    # from the very beginning both are there
    found = await tracker.wait_outcomes([old.update_id, new.update_id], "0-0", timeout_s=2)
    assert set(found) == {old.update_id, new.update_id}


async def test_wait_outcomes_waits_for_an_outcome_recorded_later(bus: Bus) -> None:
    redis, settings = bus
    tracker = PendingTracker(redis, settings)
    update = make_update()
    await tracker.record(update, "w1")
    marker = await tracker.last_outcome_id()
    result: dict[str, Outcome] = {}

    async def waiter() -> None:
        result.update(await tracker.wait_outcomes([update.update_id], marker, timeout_s=5))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.lowlevel.checkpoint()
            await tracker.resolve(make_ack(applied=1))
    assert result[update.update_id].status == "applied"


async def test_wait_outcomes_gives_up_at_its_timeout(bus: Bus) -> None:
    tracker = PendingTracker(*bus)
    await tracker.record(make_update(), "w1")
    with anyio.fail_after(3):
        assert await tracker.wait_outcomes(["never"], "0-0", timeout_s=0.2) == {}


# -- two Masters, restarts --------------------------------------------------------------


async def test_two_masters_racing_record_exactly_one_outcome_per_update(real: Bus) -> None:
    redis, settings = real
    settings = tuned(settings, ack_timeout_s=0.01, max_attempts=2, retry_backoff=1)
    accounts = [f"acc-{i}" for i in range(6)]
    updates = [make_update(account=a, version=v) for a in accounts for v in range(1, 11)]
    await PendingTracker(redis, settings).record_many([(u, "w1") for u in updates])

    # what the "workers" report: some accounts catch up, some reject, some stay silent
    acks = [make_ack(account=accounts[0], applied=10), make_ack(account=accounts[1], applied=5)]
    acks += [make_ack(account=accounts[2], applied=2), make_ack(account=accounts[2], applied=9)]
    acks += [make_ack(account=accounts[3], applied=0, seen=7, ok=False, error="bad")]
    closed: list[tuple[str, str]] = []
    retried: list[tuple[str, int]] = []

    async def master(client: Redis) -> None:
        tracker = PendingTracker(client, settings)
        while await tracker.count():
            for ack in acks:
                closed.extend((c[0], c[1]) for c in await tracker.resolve(ack))
            swept = await tracker.sweep(limit=7)
            retried.extend((u.update_id, u.attempts) for u in swept.retry)
            closed.extend((u.update_id, "failed") for u in swept.failed)
            await anyio.lowlevel.checkpoint()

    clients = [make_client(settings) for _ in range(2)]
    try:
        with anyio.fail_after(8):
            async with anyio.create_task_group() as tg:
                for client in clients:
                    tg.start_soon(master, client)
    finally:
        for client in clients:
            await client.aclose()

    ids = {u.update_id for u in updates}
    outcomes = await all_outcomes(redis, settings)
    per_id = Counter(o.update_id for o in outcomes)
    assert set(per_id) == ids
    assert set(per_id.values()) == {1}
    # the two Masters together closed each update once, and never retried one attempt twice
    assert Counter(c[0] for c in closed) == per_id
    assert len(retried) == len(set(retried))
    by_status = Counter(o.status for o in outcomes)
    stats = await PendingTracker(redis, settings).stats()
    assert stats["sent"] == len(updates)
    assert sum(stats.get(s, 0) for s in ("applied", "rejected", "failed")) == len(updates)
    assert {s: stats.get(s, 0) for s in by_status} == dict(by_status)
    assert by_status["rejected"] == 7
    for outcome in outcomes:
        stored = await PendingTracker(redis, settings).get(outcome.update_id, outcome.account_id)
        assert stored is not None
        assert stored.status == outcome.status


async def test_pending_updates_survive_a_redis_restart(own_redis_server: RedisServer) -> None:
    settings = fast_settings(own_redis_server.url, ack_timeout_s=60)
    update = make_update(version=2)
    client = make_client(settings)
    try:
        await PendingTracker(client, settings).record(update, "w1")
    finally:
        await client.aclose()

    await anyio.to_thread.run_sync(own_redis_server.restart)

    client = make_client(settings)
    try:
        # a new Master (new tracker, new connection) finds the update and closes it
        tracker = PendingTracker(client, settings)
        assert await tracker.count() == 1
        [(update_id, status, _latency)] = await tracker.resolve(make_ack(applied=2))
        assert (update_id, status) == (update.update_id, "applied")
    finally:
        await client.aclose()
