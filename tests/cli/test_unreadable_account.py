"""An account whose key was overwritten with another type (a string where its hash was):
the other accounts still list and change, diagnose says how to get rid of it, and
`account remove` does (real redis-server, the real `hiscrm` command)."""

from __future__ import annotations

from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.settings import BusSettings
from hiscrm_cli.common import EXIT_FAILED
from tests.cli.process import hiscrm

Bus = tuple[Redis, BusSettings]


async def test_an_account_key_holding_no_hash_can_be_seen_and_removed(real: Bus) -> None:
    redis, settings = real
    store = AccountStore(redis, settings.keys)
    for account_id in ("acc-1", "acc-2"):
        await store.create(AccountConfig(id=account_id, platform="synthetic"))
    await redis.delete(settings.keys.account("acc-2"))
    await redis.set(settings.keys.account("acc-2"), "oops")

    code, out, err = await hiscrm(settings, "account", "list")
    assert code == 0, err
    rows = {line.split()[1]: line for line in out.splitlines() if "acc-" in line}
    assert "synthetic" in rows["acc-1"] and "unreadable" in rows["acc-2"]

    code, out, err = await hiscrm(settings, "diagnose")
    assert "hiscrm account remove acc-2" in out, out + err

    for args in (("--all",), ("acc-2",)):
        code, out, err = await hiscrm(settings, "account", "set", *args, "name=x")
        assert code == EXIT_FAILED, out + err
        assert "nothing written" in err and "acc-2" in err and "cannot be read" in err
        assert "Traceback" not in err
    assert (await store.get("acc-1")).name != "x"  # refused whole, as for an invalid change

    code, out, err = await hiscrm(settings, "account", "remove", "acc-2")
    assert code == 0, out + err
    assert not await redis.exists(settings.keys.account("acc-2"))
    code, out, err = await hiscrm(settings, "account", "list")
    assert code == 0 and "acc-2" not in out and "acc-1" in out
