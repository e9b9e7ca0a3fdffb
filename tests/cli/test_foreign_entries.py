"""``hiscrm diagnose`` and ``hiscrm data`` read streams and hashes anyone with access to
Redis can write, and a database a CRM team may write to: an entry or a row hiscrm did
not write is skipped or read as far as it goes, never a traceback."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.archive import Archive
from hiscrm_master.schema import comments
from tests.cli.process import hiscrm

Bus = tuple[Redis, BusSettings]
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


async def foreign_row() -> None:
    """A comment another program wrote into the Master's database: its raw payload
    is not an item."""
    archive = Archive.open(os.environ["HISCRM_DATABASE_URL"])
    try:
        await archive.ready()
        async with archive.engine.begin() as conn:
            await conn.execute(
                comments.insert(),
                {
                    "account_id": "acc-1",
                    "item_id": "c1",
                    "author": "crm",
                    "text": "not from a worker",
                    "created_at": CREATED,
                    "received_at": CREATED,
                    "raw": "not an item",
                },
            )
    finally:
        await archive.close()


async def test_foreign_entries_do_not_stop_diagnose_or_data(real: Bus) -> None:
    redis, settings = real
    keys = settings.keys
    await AccountStore(redis, keys).create(
        AccountConfig(id="acc-1", platform="sandbox", worker_id="w1")
    )
    await WorkerRegistry(redis, keys).heartbeat(
        WorkerInfo(id="w1", platforms=("sandbox",)), ttl_s=60
    )
    await redis.xadd(keys.outcomes(), {"x": "y"})  # redis-cli XADD hiscrm:outcomes '*' x y
    await redis.hset(keys.worker("w1"), mapping={"tasks": "[", "capacity": "lots"})
    # where an older version kept items: read by no command (a Master moves them)
    await redis.hset(keys.legacy_item_bodies("acc-1", "comments"), "c9", "not an item")
    await redis.hset(keys.legacy_crawl_stats("acc-1"), mapping={"comments": "x"})
    await foreign_row()

    for args in (("diagnose",), ("diagnose", "acc-1")):
        code, out, err = await hiscrm(settings, *args)
        assert "Traceback" not in err
        assert code == 1, err  # findings (not logged in, no Master), not a crash
        assert "acc-1" in out and "hiscrm login acc-1" in out
    code, out, err = await hiscrm(settings, "diagnose", "--json")
    assert code == 1, err
    doc = json.loads(out)
    (account,) = doc["accounts"]
    assert account["comments"] == 1 and account["dms"] == 0
    assert [p["code"] for p in doc["problems"]] == ["no_master"]  # the database answered
    assert [(w["id"], w["alive"]) for w in doc["workers"]] == [("w1", True)]
    code, out, err = await hiscrm(settings, "diagnose", "acc-1", "--json")
    (account,) = json.loads(out)["accounts"]
    assert [(c["id"], c["text"]) for c in account["recent_comments"]] == [
        ("c1", "not from a worker")
    ]

    code, out, err = await hiscrm(settings, "data", "acc-1")
    assert code == 0 and "Traceback" not in err, err
    # the foreign c1 is read from its columns; the old Redis keys are not read at all
    assert "1 comments on 0 works, 0 DMs in 0 conversations stored; 0 crawl batches" in out
    assert "not from a worker" in out and "c9" not in out
    assert "last crawl unknown: worker w1 reports no task for this account yet" in out
    code, out, err = await hiscrm(settings, "data", "acc-1", "--json")
    assert code == 0, err
    (item,) = json.loads(out)["items"]
    assert (item["item_id"], item["text"], item["author"]) == ("c1", "not from a worker", "crm")
    assert item["created_at"].startswith("2026-01-01T00:00:00")
