"""What diagnose reads may have been written by something else than hiscrm: a foreign
stream entry, a damaged registry hash, a database row that is not an item hiscrm wrote,
a database without hiscrm's tables. Each is skipped, read as far as it goes or reported,
and never stops the snapshot."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import TaskReport, WorkerInfo, WorkerRegistry
from hiscrm_master.archive import Archive, Arrival, Filter
from hiscrm_master.diagnosis import diagnose
from hiscrm_master.schema import comments
from hiscrm_master.snapshot import collect

Bus = tuple[Redis, BusSettings]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def comment(n: int) -> CrawledItem:
    return CrawledItem(kind="comment", item_id=f"c{n}", text=f"text {n}", created_at=T0)


async def add_account(redis: Redis, settings: BusSettings, worker: str = "w1") -> None:
    store = AccountStore(redis, settings.keys)
    await store.create(
        AccountConfig(id="acc-1", platform="sandbox", worker_id=worker, platform_user_id="u1")
    )


async def test_foreign_outcome_entries_are_skipped(bus: Bus) -> None:
    redis, settings = bus
    keys = settings.keys
    await add_account(redis, settings)
    await redis.xadd(keys.outcomes(), {"x": "y"})
    await redis.xadd(keys.outcomes(), {"update_id": "u", "account_id": "acc-1", "version": "x"})
    await redis.xadd(keys.outcomes(), {b"\xff": b"\xfe"})
    rejected = {
        "update_id": "upd-1",
        "account_id": "acc-1",
        "worker_id": "w1",
        "version": "2",
        "status": "rejected",
        "attempts": "1",
        "latency_ms": "3.5",
        "error": "bad proxy",
    }
    await redis.xadd(keys.outcomes(), rejected)  # type: ignore[arg-type]
    await redis.xadd(keys.outcomes(), {"x": "y"})

    report = diagnose(await collect(redis, settings)).doc()

    (account,) = report["accounts"]
    assert [u["update_id"] for u in account["unsuccessful_updates"]] == ["upd-1"]
    assert account["unsuccessful_updates"][0]["error"] == "bad proxy"


async def test_an_update_record_that_does_not_parse_is_skipped(bus: Bus) -> None:
    redis, settings = bus
    keys = settings.keys
    await add_account(redis, settings)
    await redis.zadd(keys.account_pending("acc-1"), {"broken": 1})
    await redis.hset(keys.update("broken"), mapping={"version": "not a number"})

    report = diagnose(await collect(redis, settings, "acc-1")).doc()

    assert report["accounts"][0]["pending_updates"] == []


async def test_a_damaged_worker_hash_still_reports_the_worker(bus: Bus) -> None:
    redis, settings = bus
    keys = settings.keys
    registry = WorkerRegistry(redis, keys)
    good = TaskReport(applied_version=1, state="running")
    info = WorkerInfo(id="w1", host="box", platforms=("sandbox",), tasks={"acc-1": good})
    await registry.heartbeat(info, ttl_s=60)
    await registry.heartbeat(WorkerInfo(id="w2", host="other"), ttl_s=60)
    await redis.hset(
        keys.worker("w2"),
        mapping={
            "id": "somebody-else",  # the id is the key's, not what the hash claims
            "tasks": '{"a": {"state": "no such state"}, "b": {"applied_version": 4}, "c": 5}',
            "platforms": "[not json",
            "capacity": "-3",
            "pid": "many",
            "heartbeat_at": "yesterday",
        },
    )
    await redis.hset(keys.worker("w1"), "tasks", "{" * 5000 + "}" * 5000)

    alive, dead = await registry.all()

    assert dead == []
    by_id = {w.id: w for w in alive}
    assert set(by_id) == {"w1", "w2"}
    w2 = by_id["w2"]
    assert (w2.host, w2.platforms, w2.capacity, w2.pid) == ("other", (), 50, 0)
    assert set(w2.tasks) == {"b"} and w2.tasks["b"].applied_version == 4
    w1 = await registry.get("w1")
    assert w1 is not None and w1.id == "w1" and w1.host == "box" and w1.tasks == {}
    assert w1.platforms == ("sandbox",)

    await add_account(redis, settings, worker="w2")
    report = diagnose(await collect(redis, settings)).doc()
    workers = {w["id"]: w for w in report["workers"]}
    assert workers["w2"]["alive"] is True and workers["w2"]["accounts"] == ["acc-1"]


async def test_rows_another_program_wrote_are_read_from_their_columns(bus: Bus) -> None:
    """The database is for a CRM team to query, and write to: a row whose raw payload
    is not an item hiscrm wrote is read from its columns."""
    redis, settings = bus
    await add_account(redis, settings)
    archive = Archive.open(os.environ["HISCRM_DATABASE_URL"])
    try:
        batch = CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=(comment(1),))
        await archive.store([Arrival(batch, int(time.time() * 1000))])
        row = {
            "account_id": "acc-1",
            "author": "crm",
            "created_at": T0 + timedelta(hours=1),
            "received_at": T0,
        }
        async with archive.engine.begin() as conn:
            await conn.execute(
                comments.insert(),
                [
                    {**row, "item_id": "c2", "text": "added by hand", "raw": {"kind": "comment"}},
                    {**row, "item_id": "c3", "text": "raw not an object", "raw": "not an item"},
                    {**row, "item_id": "c4", "text": "raw null", "raw": None},
                ],
            )
        report = diagnose(await collect(redis, settings, "acc-1", archive)).doc()
        items = await archive.items("acc-1", Filter(limit=10))
    finally:
        await archive.close()

    (account,) = report["accounts"]
    assert account["comments"] == 4
    assert [(c["id"], c["text"]) for c in account["recent_comments"]] == [
        ("c4", "raw null"),
        ("c3", "raw not an object"),
        ("c2", "added by hand"),
    ]
    assert "database_unreachable" not in [p["code"] for p in report["problems"]]
    assert [i.item_id for i in items] == ["c4", "c3", "c2", "c1"]
    assert items[2] == CrawledItem(
        kind="comment",
        item_id="c2",
        text="added by hand",
        author="crm",
        created_at=row["created_at"],
    )
    assert items[3] == comment(1)  # hiscrm's own: as the worker sent it
    json.dumps(report)


async def test_a_database_without_hiscrm_tables_is_reported_not_fatal(
    bus: Bus, tmp_path: Path
) -> None:
    redis, settings = bus
    await add_account(redis, settings)
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a file, but no Master made its tables
    archive = Archive.open(f"sqlite+aiosqlite:///{empty}", create=False)
    try:
        report = diagnose(await collect(redis, settings, None, archive)).doc()
    finally:
        await archive.close()

    (finding,) = [p for p in report["problems"] if p["code"] == "database_unreachable"]
    assert (
        f"the crawled-data database sqlite+aiosqlite:///{empty} does not answer"
        in (finding["message"])
    )
    assert "no such table" in finding["message"]
    (account,) = report["accounts"]  # the rest of the report is there
    assert account["id"] == "acc-1" and account["comments"] is None
    json.dumps(report)


async def test_dead_letter_counts_that_are_not_numbers_are_skipped(bus: Bus) -> None:
    redis, settings = bus
    keys = settings.keys
    await add_account(redis, settings)
    await redis.hset(keys.deadletter_counts, mapping={"acks": "2", "events": "many"})

    report = diagnose(await collect(redis, settings)).doc()

    dead = [p["message"] for p in report["problems"] if p["code"] == "dead_letters"]
    assert dead == [
        "2 message(s) from acks were dead-lettered "
        "(undecodable, or refused: not_owner / wrong_sender)"
    ]
    json.dumps(report)  # the whole report still serializes
