"""Login success handling: all of it or nothing."""

from __future__ import annotations

from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.messages import LoginExpired, LoginSuccess
from hiscrm_bus.settings import BusSettings
from hiscrm_master.login import on_login_expired, on_login_success
from hiscrm_master.updates import Updates

Bus = tuple[Redis, BusSettings]


def event(account_id: str, user_id: str) -> LoginSuccess:
    return LoginSuccess(
        sender="w1",
        account_id=account_id,
        worker_id="w1",
        platform_user_id=user_id,
        user_info={"nickname": "小王", "sec_uid": "MS4w"},
    )


async def test_login_success_is_one_versioned_write_and_a_tracked_update(bus: Bus) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, "m1")
    await updates.store.create(AccountConfig(id="acc-1", platform="douyin", worker_id="w1"))
    assert await on_login_success(updates, event("acc-1", " 1864722759 "))
    config = await updates.store.get("acc-1")
    assert config.platform_user_id == "1864722759"
    assert config.login_status == "logged_in"
    assert config.user_info["sec_uid"] == "MS4w"
    assert config.config_version == 2
    (pending,) = await updates.tracker.of_account("acc-1")
    assert (pending.version, pending.worker_id, pending.reason) == (2, "w1", "login_success")
    assert set(pending.fields) == {"platform_user_id", "login_status", "user_info"}


async def test_unknown_account_or_empty_user_id_is_refused_whole(bus: Bus) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, "m1")
    store = AccountStore(redis, settings.keys)
    await store.create(AccountConfig(id="acc-1", platform="douyin", worker_id="w1"))
    before = await redis.hgetall(settings.keys.account("acc-1"))
    assert not await on_login_success(updates, event("acc-1", "   "))
    assert not await on_login_success(updates, event("ghost", "42"))
    assert await redis.hgetall(settings.keys.account("acc-1")) == before
    assert not await redis.exists(settings.keys.account("ghost"))
    assert await updates.tracker.count() == 0


async def test_login_for_an_unowned_account_writes_but_sends_nothing(bus: Bus) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, "m1")
    await updates.store.create(AccountConfig(id="acc-1", platform="douyin"))
    assert await on_login_success(updates, event("acc-1", "42"))
    assert (await updates.store.get("acc-1")).platform_user_id == "42"
    assert await updates.tracker.count() == 0
    assert await updates.store.unassigned_ids() == ["acc-1"]


async def test_an_expired_login_is_a_tracked_update_from_the_owner_only(bus: Bus) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, "m1")
    await updates.store.create(
        AccountConfig(id="acc-1", platform="douyin", worker_id="w1", platform_user_id="42")
    )

    def expired(worker: str) -> LoginExpired:
        return LoginExpired(
            sender=worker, account_id="acc-1", worker_id=worker, reason="login page"
        )

    assert not await on_login_expired(updates, expired("w2"))  # not its account
    assert (await updates.store.get("acc-1")).login_status == "not_logged_in"
    assert await on_login_expired(updates, expired("w1"))
    config = await updates.store.get("acc-1")
    assert (config.login_status, config.config_version) == ("expired", 2)
    assert config.platform_user_id == "42"  # who it is does not change
    (pending,) = await updates.tracker.of_account("acc-1")
    assert (pending.reason, pending.worker_id) == ("login_expired", "w1")
    # said again while already expired: nothing more is written
    assert not await on_login_expired(updates, expired("w1"))
    assert (await updates.store.get("acc-1")).config_version == 2
    # a new login clears it
    assert await on_login_success(updates, event("acc-1", "42"))
    assert (await updates.store.get("acc-1")).login_status == "logged_in"
