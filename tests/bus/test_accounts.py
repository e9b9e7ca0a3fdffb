from __future__ import annotations

import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore, decode_hash, parse_assignments
from hiscrm_bus.errors import (
    AccountExists,
    AccountNotFound,
    InvalidAccountConfig,
    VersionConflict,
)
from hiscrm_bus.limits import MAX_VERSION
from hiscrm_bus.settings import BusSettings

Bus = tuple[Redis, BusSettings]


async def test_create_then_get_round_trips(bus: Bus) -> None:
    redis, settings = bus
    store = AccountStore(redis, settings.keys)
    created = await store.create(
        AccountConfig(id="acc-1", platform="douyin", worker_id="w1", user_info={"nick": "小王"})
    )
    assert created.config_version == 1
    got = await store.get("acc-1")
    assert got == created
    assert await store.ids() == ["acc-1"]
    assert await store.ids_of_worker("w1") == ["acc-1"]
    # an operator reading with redis-cli sees plain strings
    raw = await redis.hgetall(settings.keys.account("acc-1"))
    assert raw[b"enabled"] == b"true"
    assert b"platform_user_id" not in raw


async def test_create_twice_is_refused(bus: Bus) -> None:
    store = AccountStore(bus[0], bus[1].keys)
    await store.create(AccountConfig(id="a", platform="sandbox"))
    with pytest.raises(AccountExists):
        await store.create(AccountConfig(id="a", platform="sandbox"))


async def test_update_bumps_version_atomically_with_fields(bus: Bus) -> None:
    store = AccountStore(bus[0], bus[1].keys)
    await store.create(AccountConfig(id="a", platform="douyin"))
    result = await store.update(
        "a", {"platform_user_id": "1864722759", "login_status": "logged_in"}
    )
    assert result.version == 2
    assert result.fields == ("login_status", "platform_user_id")
    got = await store.get("a")
    assert (got.platform_user_id, got.login_status, got.config_version) == (
        "1864722759",
        "logged_in",
        2,
    )
    assert (await store.versions(["a", "nope"])) == {"a": 2, "nope": None}


async def test_invalid_value_is_refused_before_anything_is_written(bus: Bus) -> None:
    redis, settings = bus
    store = AccountStore(redis, settings.keys)
    await store.create(AccountConfig(id="a", platform="douyin"))
    before = await redis.hgetall(settings.keys.account("a"))
    for changes in (
        {"monitor_interval_s": "-3"},
        {"monitor_interval_s": "fast"},
        {"nonsense": "1"},
        {"config_version": "99"},
        {"enabled": "maybe", "name": "ok"},
    ):
        with pytest.raises(InvalidAccountConfig):
            await store.update("a", changes)
    assert await redis.hgetall(settings.keys.account("a")) == before


async def test_setting_none_deletes_the_field(bus: Bus) -> None:
    store = AccountStore(bus[0], bus[1].keys)
    await store.create(AccountConfig(id="a", platform="douyin", platform_user_id="u1"))
    await store.update("a", parse_assignments(["platform_user_id="]))
    assert (await store.get("a")).platform_user_id is None


async def test_reassignment_moves_the_account_between_worker_sets(bus: Bus) -> None:
    store = AccountStore(bus[0], bus[1].keys)
    await store.create(AccountConfig(id="a", platform="douyin", worker_id="w1"))
    result = await store.update("a", {"worker_id": "w2"})
    assert (result.previous_worker_id, result.worker_id) == ("w1", "w2")
    assert await store.ids_of_worker("w1") == []
    assert await store.ids_of_worker("w2") == ["a"]


async def test_conditional_update_detects_a_concurrent_change(bus: Bus) -> None:
    store = AccountStore(bus[0], bus[1].keys)
    await store.create(AccountConfig(id="a", platform="douyin"))
    await store.update("a", {"name": "x"})
    with pytest.raises(VersionConflict):
        await store.update("a", {"name": "y"}, expect_version=1)
    assert (await store.get("a")).name == "x"


async def test_update_many_writes_valid_ones_and_reports_invalid_ones(bus: Bus) -> None:
    store = AccountStore(bus[0], bus[1].keys)
    for i in range(3):
        await store.create(AccountConfig(id=f"a{i}", platform="douyin"))
    current = {a: (await store.get(a)).model_dump() for a in ("a0", "a1", "a2")}
    results = await store.update_many(
        {
            "a0": (current["a0"], {"monitor_interval_s": 5}),
            "a1": (current["a1"], {"monitor_interval_s": 0}),
            "a2": (current["a2"], {"monitor_interval_s": 7}),
        }
    )
    assert [type(r).__name__ for r in results] == [
        "AccountUpdate",
        "InvalidAccountConfig",
        "AccountUpdate",
    ]
    assert (await store.get("a1")).config_version == 1
    assert (await store.get("a2")).monitor_interval_s == 7


async def test_remove(bus: Bus) -> None:
    store = AccountStore(bus[0], bus[1].keys)
    await store.create(AccountConfig(id="a", platform="douyin", worker_id="w1"))
    assert await store.remove("a") == (1, "w1")
    assert await store.ids() == []
    assert await store.ids_of_worker("w1") == []
    with pytest.raises(AccountNotFound):
        await store.get("a")
    with pytest.raises(AccountNotFound):
        await store.remove("a")


async def test_hash_written_behind_our_back_with_a_bad_value_is_reported(bus: Bus) -> None:
    redis, settings = bus
    store = AccountStore(redis, settings.keys)
    await store.create(AccountConfig(id="a", platform="douyin"))
    await redis.hset(settings.keys.account("a"), "monitor_interval_s", "soon")
    with pytest.raises(InvalidAccountConfig, match="monitor_interval_s"):
        await store.get("a")


async def test_mark_stale_never_resurrects_a_removed_account(bus: Bus) -> None:
    redis, settings = bus
    store = AccountStore(redis, settings.keys)
    await store.create(AccountConfig(id="a", platform="douyin"))
    await store.set_stale("a", True)
    assert (await store.get("a")).config_stale
    await store.set_stale("a", False)
    assert not (await store.get("a")).config_stale
    await store.remove("a")
    await store.set_stale("a", True)
    assert not await redis.exists(settings.keys.account("a"))


async def test_a_change_can_repair_an_invalid_stored_value(bus: Bus) -> None:
    redis, settings = bus
    store = AccountStore(redis, settings.keys)
    await store.create(AccountConfig(id="a", platform="douyin"))
    await redis.hset(settings.keys.account("a"), "monitor_interval_s", "soon")
    with pytest.raises(InvalidAccountConfig):
        await store.update("a", {"name": "still broken"})
    result = await store.update("a", {"monitor_interval_s": "12"})
    assert result.version == 2
    assert (await store.get("a")).monitor_interval_s == 12


async def test_a_final_version_refuses_a_write_before_anything_is_written(bus: Bus) -> None:
    """A version that cannot be raised (2**63-1) refuses the write whole: placing the
    account must not change its owner without a version bump."""
    redis, settings = bus
    store = AccountStore(redis, settings.keys)
    await store.create(AccountConfig(id="a", platform="sandbox"))
    key = settings.keys.account("a")
    await redis.hset(key, "config_version", str(MAX_VERSION))
    before = await redis.hgetall(key)
    with pytest.raises(InvalidAccountConfig, match="cannot be raised"):
        await store.update("a", {"worker_id": "w1"})
    (refused,) = await store.update_many({"a": (decode_hash(before), {"worker_id": "w1"})})
    assert isinstance(refused, InvalidAccountConfig)
    assert await redis.hgetall(key) == before
    assert await store.ids_of_worker("w1") == []
    assert await store.unassigned_ids() == ["a"]


async def test_a_bad_proxy_is_described_without_its_credentials(bus: Bus) -> None:
    redis, settings = bus
    store = AccountStore(redis, settings.keys)
    await store.create(AccountConfig(id="a", platform="sandbox"))
    proxy = "http://alice:S3cr3tPassw0rd@proxy.example:8080/" + "x" * 480
    await redis.hset(settings.keys.account("a"), "proxy", proxy)
    with pytest.raises(InvalidAccountConfig) as raised:
        await store.get("a")
    assert str(raised.value).startswith(f"proxy=<hidden, {len(proxy)} chars>: ")
    assert "S3cr3t" not in str(raised.value) and "alice" not in str(raised.value)
    # a change that would keep it is refused the same way
    with pytest.raises(InvalidAccountConfig) as raised:
        await store.update("a", {"name": "x"})
    assert "S3cr3t" not in str(raised.value)
