"""``hiscrm data`` is honest (issue 15, finding 4): its counts are what is stored, the
total received is labelled as such, and the last crawl is the one the worker reports,
even when it found nothing and so sent no batch."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import TaskReport, WorkerInfo, WorkerRegistry
from hiscrm_master.ingest import DEFAULT_CAP, IngestStore
from tests.cli.process import hiscrm

Bus = tuple[Redis, BusSettings]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CRAWLED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def comments(first: int, count: int) -> tuple[CrawledItem, ...]:
    return tuple(
        CrawledItem(
            kind="comment",
            item_id=f"c{n}",
            text=f"comment {n}",
            created_at=T0 + timedelta(seconds=n),
        )
        for n in range(first, first + count)
    )


async def test_counts_are_what_is_stored_and_received_is_labelled(real: Bus) -> None:
    redis, settings = real
    keys = settings.keys
    await AccountStore(redis, keys).create(
        AccountConfig(id="acc-1", platform="sandbox", worker_id="w1")
    )
    store = IngestStore(redis, keys)
    for first in (1, 1001):  # 1252 comments in two batches, more than the cap keeps
        items = comments(first, 1000 if first == 1 else 252)
        await store.store(CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=items))
    assert await redis.zcard(keys.items("acc-1", "comments")) == DEFAULT_CAP == 1000

    code, out, err = await hiscrm(settings, "data", "acc-1", "--limit", "2")
    assert code == 0, err
    assert "1000 comments, 0 DMs stored (1252 comments, 0 DMs received in all;" in out
    assert "c1252" in out and "c1251" in out and "c1250" not in out

    code, out, err = await hiscrm(settings, "data", "acc-1", "--json", "--limit", "1")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["comments"], doc["dms"]) == (1000, 0)
    assert doc["received"] == {"comments": 1252, "dms": 0}
    assert [i["item_id"] for i in doc["items"]] == ["c1252"]


async def test_the_last_crawl_is_the_workers_report_even_when_it_found_nothing(real: Bus) -> None:
    redis, settings = real
    keys = settings.keys
    await AccountStore(redis, keys).create(
        AccountConfig(id="acc-1", platform="sandbox", worker_id="w1")
    )
    code, out, err = await hiscrm(settings, "data", "acc-1")
    assert code == 0, err  # an account with nothing crawled yet is not an error
    assert "0 comments, 0 DMs stored" in out
    assert "last crawl unknown: worker w1 is not alive (last batch stored never)" in out

    # three crawls that found nothing: no batch was sent, the heartbeat says so
    registry = WorkerRegistry(redis, keys)
    report = TaskReport(applied_version=1, state="running", crawls=3, last_crawl_at=CRAWLED)
    await registry.heartbeat(WorkerInfo(id="w1", tasks={"acc-1": report}), ttl_s=60)
    code, out, err = await hiscrm(settings, "data", "acc-1")
    assert code == 0, err
    assert (
        "last crawl 2026-03-04T05:06:07+00:00 on worker w1: 3 crawl(s), 0 item(s) found "
        "since the task started; task running"
    ) in out
    code, out, err = await hiscrm(settings, "data", "acc-1", "--json")
    doc = json.loads(out)
    assert doc["last_crawl_at"] == "2026-03-04T05:06:07+00:00"
    assert doc["last_batch_at"] is None
    assert (doc["worker"], doc["worker_alive"]) == ("w1", True)
    assert doc["task"]["crawls"] == 3 and doc["task"]["items"] == 0

    # a crawl that failed: its error is shown with the time of the last one that worked
    error = "crawl failed: TimeoutError: page did not load"
    failing = report.model_copy(update={"state": "error", "error": error, "items": 4})
    await registry.heartbeat(WorkerInfo(id="w1", tasks={"acc-1": failing}), ttl_s=60)
    if "items_left" in TaskReport.model_fields:  # reported once the crawler pages back
        raw = json.loads(await redis.hget(keys.worker("w1"), "tasks") or "{}")
        raw["acc-1"]["items_left"] = 7
        await redis.hset(keys.worker("w1"), "tasks", json.dumps(raw))
    code, out, err = await hiscrm(settings, "data", "acc-1")
    assert code == 0, err
    assert "3 crawl(s), 4 item(s) found since the task started" in out
    assert f"; task error: {error}" in out
    if "items_left" in TaskReport.model_fields:
        assert "7 left uncrawled" in out
    code, out, err = await hiscrm(settings, "data", "acc-1", "--json")
    assert json.loads(out)["task"]["error"] == error


async def test_data_kept_on_removal_is_shown_as_such(real: Bus) -> None:
    redis, settings = real
    keys = settings.keys
    await AccountStore(redis, keys).create(AccountConfig(id="acc-1", platform="sandbox"))
    await IngestStore(redis, keys).store(
        CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=comments(1, 2))
    )
    code, _out, err = await hiscrm(settings, "account", "remove", "acc-1", "--keep-data")
    assert code == 0, err
    code, out, err = await hiscrm(settings, "data", "acc-1")
    assert code == 0, err
    assert "no account 'acc-1': this is the crawled data kept on removal" in out
    assert "2 comments, 0 DMs stored" in out
    assert "last crawl unknown: no worker runs this account" in out
    code, out, err = await hiscrm(settings, "data", "acc-1", "--json")
    doc = json.loads(out)
    assert doc["account_exists"] is False and doc["comments"] == 2
