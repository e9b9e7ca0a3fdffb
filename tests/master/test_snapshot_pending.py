"""collect() reads every account's pending updates in a fixed number of round trips
(issue 14: the console's fleet page with 1,000 accounts); what it reports per account
is what the per-account read reported."""

from __future__ import annotations

from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.pending import PendingTracker
from hiscrm_bus.settings import BusSettings
from hiscrm_master.diagnosis import diagnose
from hiscrm_master.snapshot import collect
from hiscrm_master.updates import Updates

Bus = tuple[Redis, BusSettings]


async def test_each_account_gets_its_own_pending_updates_in_version_order(bus: Bus) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, "test")
    for n in range(3):
        await updates.create(AccountConfig(id=f"acc-{n}", platform="synthetic", worker_id="w1"))
    await updates.change("acc-1", {"name": "a"}, "admin_update")
    await updates.change("acc-1", {"name": "b"}, "admin_update")
    # a record that does not parse is left out, as before
    await redis.zadd(settings.keys.account_pending("acc-2"), {"broken": 99})
    await redis.hset(settings.keys.update("broken"), mapping={"version": "x"})

    report = {a["id"]: a for a in diagnose(await collect(redis, settings)).doc()["accounts"]}

    assert [p["version"] for p in report["acc-0"]["pending_updates"]] == [1]
    assert [p["version"] for p in report["acc-1"]["pending_updates"]] == [1, 2, 3]
    assert [p["version"] for p in report["acc-2"]["pending_updates"]] == [1]
    tracker = PendingTracker(redis, settings)
    many = await tracker.of_accounts(["acc-0", "acc-1", "acc-2", "gone"])
    for account_id in ("acc-0", "acc-1", "acc-2", "gone"):
        assert many[account_id] == await tracker.of_account(account_id)
