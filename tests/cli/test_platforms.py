"""Platforms are a known set (issue 15, finding 3): one list in the bus, the worker's
registry equal to it, and an unknown name refused with exit 2 and one sentence wherever
it can be given."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from hiscrm_bus.accounts import PLATFORMS, AccountConfig, AccountStore, from_hash
from hiscrm_bus.errors import InvalidAccountConfig
from hiscrm_bus.settings import BusSettings
from hiscrm_master.archive import Archive
from hiscrm_worker.platforms import BROWSER_PLATFORMS, KNOWN, registry
from hiscrm_worker.settings import WorkerSettings
from tests.cli.process import hiscrm

Bus = tuple[Redis, BusSettings]
KNOWN_TEXT = "(sandbox, douyin, synthetic)"


def test_the_worker_registry_is_the_bus_platform_set() -> None:
    assert tuple(registry()) == KNOWN == PLATFORMS
    assert set(PLATFORMS) >= BROWSER_PLATFORMS


def test_a_stored_unknown_platform_is_an_invalid_config() -> None:
    with pytest.raises(InvalidAccountConfig) as err:
        from_hash({b"id": b"acc-1", b"platform": b"myspace", b"config_version": b"1"})
    assert str(err.value) == f"platform='myspace': not a known platform {KNOWN_TEXT}"


def test_worker_platforms_setting_takes_a_list_of_known_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HISCRM_PLATFORMS", "sandbox, synthetic")
    assert WorkerSettings().platforms == ("sandbox", "synthetic")
    monkeypatch.setenv("HISCRM_PLATFORMS", '["douyin"]')
    assert WorkerSettings().platforms == ("douyin",)
    monkeypatch.setenv("HISCRM_PLATFORMS", "sandbox,myspace")
    with pytest.raises(ValidationError, match="'myspace' is not a known platform"):
        WorkerSettings()
    monkeypatch.delenv("HISCRM_PLATFORMS")
    assert WorkerSettings().platforms == PLATFORMS


async def test_an_unknown_platform_is_exit_2_everywhere(
    real: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, settings = real
    keys = settings.keys
    await AccountStore(redis, keys).create(AccountConfig(id="acc-1", platform="sandbox"))
    before = await redis.hgetall(keys.account("acc-1"))
    refusals = {
        ("account", "add", "x", "--platform", "myspace"): (
            f"account not added: platform='myspace': not a known platform {KNOWN_TEXT}"
        ),
        ("account", "set", "acc-1", "platform=myspace"): (
            f"nothing written: acc-1: platform='myspace': not a known platform {KNOWN_TEXT}"
        ),
        ("account", "set", "--platform", "myspace", "name=x"): (
            f"--platform 'myspace' is not a known platform {KNOWN_TEXT}"
        ),
    }
    for args, sentence in refusals.items():
        code, out, err = await hiscrm(settings, *args)
        assert (code, out, err.strip()) == (2, "", f"error: {sentence}"), args
    assert not await redis.exists(keys.account("x"))
    assert not await redis.sismember(keys.unassigned(), "x")
    assert await redis.hgetall(keys.account("acc-1")) == before

    monkeypatch.setenv("HISCRM_PLATFORMS", "sandbox,myspace")
    code, out, err = await hiscrm(settings, "worker", "--id", "w1")
    assert code == 2
    assert err.strip() == (
        f"error: invalid setting platforms: 'myspace' is not a known platform {KNOWN_TEXT}"
    )
    assert not await redis.exists(keys.worker("w1"))


async def test_help_lists_every_platform(real: Bus) -> None:
    _redis, settings = real
    for args in (("account", "add", "--help"), ("account", "set", "--help")):
        code, out, _err = await hiscrm(settings, *args)
        assert code == 0
        assert "sandbox, douyin, synthetic" in out, args


async def test_data_of_an_unknown_account_is_exit_1(real: Bus) -> None:
    _redis, settings = real
    archive = Archive.open(os.environ["HISCRM_DATABASE_URL"])  # as a Master makes it
    try:
        await archive.ready()
    finally:
        await archive.close()
    for args in (("data", "nope"), ("data", "nope", "--json")):
        code, out, err = await hiscrm(settings, *args)
        assert (code, out, err.strip()) == (1, "", "error: no account 'nope'"), args
