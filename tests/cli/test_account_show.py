"""`hiscrm account show` never prints a proxy's credentials unless asked to
(`--with-secrets`), whether the stored config is valid or not (real redis-server)."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.settings import BusSettings
from tests.cli.process import hiscrm

Bus = tuple[Redis, BusSettings]
PROXY = "http://alice:S3cretPW@proxy.example:8080"


async def test_show_says_a_proxy_is_set_without_its_credentials(real: Bus) -> None:
    redis, settings = real
    await AccountStore(redis, settings.keys).create(
        AccountConfig(id="acc-1", platform="synthetic", proxy=PROXY)
    )
    code, out, err = await hiscrm(settings, "account", "show", "acc-1")
    assert code == 0, err
    assert "S3cretPW" not in out + err and "alice" not in out + err
    assert any(line.split()[1:4] == ["proxy", "│", '"set"'] for line in out.splitlines()), out

    code, out, err = await hiscrm(settings, "account", "show", "acc-1", "--json")
    assert code == 0, err
    assert json.loads(out)["config"]["proxy"] == "set"

    code, out, err = await hiscrm(settings, "account", "show", "acc-1", "--json", "--with-secrets")
    assert code == 0, err
    assert json.loads(out)["config"]["proxy"] == PROXY


async def test_show_of_an_invalid_config_hides_the_proxy_too(real: Bus) -> None:
    redis, settings = real
    await AccountStore(redis, settings.keys).create(
        AccountConfig(id="acc-1", platform="synthetic", proxy=PROXY)
    )
    await redis.hset(settings.keys.account("acc-1"), "enabled", "maybe")  # now invalid
    code, out, err = await hiscrm(settings, "account", "show", "acc-1")
    assert code != 0
    assert "invalid" in err
    assert "S3cretPW" not in out + err
    assert "proxy = set" in out
