"""``hiscrm diagnose`` reports the crawled-data database (issue 16): one that does not
answer is a finding naming it (password masked) with the rest of the report still there;
crawl batches that wait over a minute on the workers' ingest streams are ingestion
falling behind; a healthy fleet with a database that answers has no database finding."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.limits import utcnow
from hiscrm_bus.messages import CrawlBatch, CrawledItem, encode
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import TaskReport, WorkerInfo, WorkerRegistry
from hiscrm_master.archive import Archive, Arrival
from tests.cli.process import hiscrm
from tests.postgres_server import free_port

Bus = tuple[Redis, BusSettings]


async def healthy_fleet(redis: Redis, settings: BusSettings) -> None:
    """acc-1 logged in and crawling on a live w1, and a live Master."""
    keys = settings.keys
    await AccountStore(redis, keys).create(
        AccountConfig(
            id="acc-1",
            platform="sandbox",
            worker_id="w1",
            platform_user_id="u1",
            login_status="logged_in",
        )
    )
    task = TaskReport(applied_version=1, state="running", crawls=2, last_crawl_at=utcnow())
    info = WorkerInfo(id="w1", platforms=("sandbox",), tasks={"acc-1": task})
    await WorkerRegistry(redis, keys).heartbeat(info, ttl_s=60)
    await redis.zadd(keys.masters, {"m1": time.time() + 60})


def batch(n: int) -> CrawlBatch:
    item = CrawledItem(kind="comment", item_id=f"c{n}", text=f"text {n}", created_at=utcnow())
    return CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=(item,))


async def stored(*batches: CrawlBatch) -> None:
    """What a running Master stored (an empty call: it made the database)."""
    archive = Archive.open(os.environ["HISCRM_DATABASE_URL"])
    try:
        await archive.ready()
        await archive.store([Arrival(b, int(time.time() * 1000)) for b in batches])
    finally:
        await archive.close()


def codes(doc: dict[str, object]) -> list[str]:
    problems = doc["problems"]
    assert isinstance(problems, list)
    return [p["code"] for p in problems]


async def test_a_healthy_fleet_with_a_database_that_answers_is_all_green(real: Bus) -> None:
    redis, settings = real
    await healthy_fleet(redis, settings)
    await stored(batch(1), batch(2))

    code, out, err = await hiscrm(settings, "diagnose")
    assert code == 0, out + err
    assert "all green: no problem found" in out
    assert "2 c, 0 dm" in out  # the account's counts, from the database
    code, out, err = await hiscrm(settings, "diagnose", "acc-1", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["healthy"] is True and codes(doc) == []
    (account,) = doc["accounts"]
    assert (account["comments"], account["dms"]) == (2, 0)
    assert [c["id"] for c in account["recent_comments"]] == ["c2", "c1"]


async def test_a_database_that_does_not_answer_is_a_finding_with_its_password_masked(
    real: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, settings = real
    await healthy_fleet(redis, settings)
    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://u:secretpw@127.0.0.1:{port}/db"
    shown = f"postgresql+asyncpg://u:***@127.0.0.1:{port}/db"
    monkeypatch.setenv("HISCRM_DATABASE_URL", url)

    code, out, err = await hiscrm(settings, "diagnose", "--json")
    assert code == 1, err
    assert "secretpw" not in out + err
    doc = json.loads(out)
    assert codes(doc) == ["database_unreachable"]
    (finding,) = doc["problems"]
    assert finding["message"].startswith(f"the crawled-data database {shown} does not answer: ")
    assert "HISCRM_DATABASE_URL" in finding["remedy"]
    # the rest of the report is there: the account and its worker, counts unknown
    (account,) = doc["accounts"]
    assert (account["id"], account["task_state"], account["problems"]) == ("acc-1", "running", [])
    assert (account["comments"], account["dms"]) == (None, None)
    assert [(w["id"], w["alive"]) for w in doc["workers"]] == [("w1", True)]

    for args in (("diagnose",), ("diagnose", "acc-1")):
        code, out, err = await hiscrm(settings, *args)
        assert code == 1, err
        assert "Traceback" not in err and "secretpw" not in out + err
        assert f"problem the crawled-data database {shown} does not answer" in out
        assert "acc-1" in out and "w1" in out and "running" in out


async def test_batches_no_master_stored_for_over_a_minute_are_ingest_behind(real: Bus) -> None:
    redis, settings = real
    keys = settings.keys
    await healthy_fleet(redis, settings)
    await stored()
    # what w1 sent two minutes ago (Redis' clock) and no Master has stored: one read
    # by a Master that then stopped (pending), two not read at all
    seconds, _micros = await redis.time()
    old = int(seconds) * 1000 - 120_000
    stream = keys.worker_stream("w1", "ingest")
    await redis.xgroup_create(stream, "masters", id="0", mkstream=True)
    for n in range(3):
        await redis.xadd(stream, {"msg": encode(batch(n))}, id=f"{old}-{n}")
    await redis.xreadgroup("masters", "m-gone", {stream: ">"}, count=1)

    code, out, err = await hiscrm(settings, "diagnose", "--json")
    assert code == 1, err
    doc = json.loads(out)
    assert codes(doc) == ["ingest_behind"]
    (finding,) = doc["problems"]
    assert finding["message"].startswith(
        "3 crawl batch(es) wait to be stored in the database, the oldest for 12"
    )
    assert "check that a Master runs" in finding["remedy"]
    code, out, err = await hiscrm(settings, "diagnose")
    assert code == 1, err
    assert "problem 3 crawl batch(es) wait to be stored in the database" in out

    # stored and acknowledged: nothing waits any more
    entries: Any = await redis.xrange(stream)
    await redis.xack(stream, "masters", *[entry_id for entry_id, _fields in entries])
    await redis.xgroup_setid(stream, "masters", "$")
    code, out, err = await hiscrm(settings, "diagnose", "--json")
    assert code == 0, out + err
    assert codes(json.loads(out)) == []
