"""``hiscrm diagnose`` and ``hiscrm data`` read streams and hashes anyone with access to
Redis can write: an entry hiscrm did not write is skipped, never a traceback."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from tests.cli.process import hiscrm

Bus = tuple[Redis, BusSettings]


async def test_foreign_entries_do_not_stop_diagnose_or_data(real: Bus) -> None:
    redis, settings = real
    keys = settings.keys
    await AccountStore(redis, keys).create(
        AccountConfig(id="acc-1", platform="sandbox", worker_id="w1")
    )
    await WorkerRegistry(redis, keys).heartbeat(
        WorkerInfo(id="w1", platforms=("sandbox",)), ttl_s=60
    )
    await redis.xadd(keys.outcomes, {"x": "y"})  # redis-cli XADD hiscrm:outcomes '*' x y
    await redis.hset(keys.worker("w1"), mapping={"tasks": "[", "capacity": "lots"})
    await redis.zadd(keys.items("acc-1", "comments"), {"c1": 1})
    await redis.hset(keys.item_bodies("acc-1", "comments"), "c1", "not an item")
    await redis.hset(keys.crawl_stats("acc-1"), mapping={"comments": "x", "last_crawl_at": "?"})

    for args in (("diagnose",), ("diagnose", "acc-1")):
        code, out, err = await hiscrm(settings, *args)
        assert "Traceback" not in err
        assert code == 1, err  # findings (not logged in, no Master), not a crash
        assert "acc-1" in out and "hiscrm login acc-1" in out
    code, out, err = await hiscrm(settings, "diagnose", "--json")
    assert code == 1, err
    doc = json.loads(out)
    assert doc["accounts"][0]["comments"] == 0 and doc["accounts"][0]["recent_comments"] == []
    assert [(w["id"], w["alive"]) for w in doc["workers"]] == [("w1", True)]

    code, out, err = await hiscrm(settings, "data", "acc-1")
    assert code == 0 and "Traceback" not in err, err
    # the foreign c1 is stored (its body is not shown); the stats that do not parse are none
    assert "1 comments, 0 DMs stored (0 comments, 0 DMs received in all" in out
    assert "last crawl unknown: worker w1 reports no task for this account yet" in out
    code, out, err = await hiscrm(settings, "data", "acc-1", "--json")
    assert code == 0, err
    assert json.loads(out)["items"] == []
