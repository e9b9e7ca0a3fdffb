"""Crawled data reaches the database exactly once (issue 16): 100,000 items over 100
accounts, the Master SIGKILLed mid-run, another Master finishing the backlog; on SQLite
and on PostgreSQL. And ``hiscrm data --grep`` finds one comment among them."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.streams import append_many_to
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.archive import Archive
from hiscrm_master.database import missing_file
from hiscrm_master.schema import comments, crawl_runs
from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

ACCOUNTS = 100
PER_ACCOUNT = 1000
PER_BATCH = 100
WORKERS = 4
T0 = datetime(2026, 11, 1, tzinfo=UTC)
NEEDLE = "独一无二的针 needle-4711"


def account_of(n: int) -> str:
    return f"acc-{n:03d}"


def worker_of(n: int) -> str:
    return f"w{n % WORKERS}"


def batches(half: int) -> Iterator[tuple[str, CrawlBatch]]:
    """Half 0 or 1 of the crawl: each account's items in batches, as its worker sends them."""
    for a in range(ACCOUNTS):
        account, worker = account_of(a), worker_of(a)
        first = half * PER_ACCOUNT // 2
        for start in range(first, first + PER_ACCOUNT // 2, PER_BATCH):
            items = tuple(
                CrawledItem(
                    kind="comment",
                    item_id=f"{account}-c{i}",
                    text=NEEDLE if (a, i) == (57, 321) else f"评论 {i} of {account}: 好看！",
                    author=f"fan{i % 37}",
                    created_at=T0 + timedelta(seconds=i),
                    extra={"work_id": f"work-{i % 5}", "user_id": f"u{i % 37}"},
                )
                for i in range(start, start + PER_BATCH)
            )
            batch = CrawlBatch(sender=worker, account_id=account, worker_id=worker, items=items)
            yield worker, batch


async def prepare(stack: Stack) -> None:
    """100 accounts owned by 4 live workers (heartbeats that outlast the test)."""
    async with Redis.from_url(stack.redis_url) as redis:
        store = AccountStore(redis, stack.keys)
        for a in range(ACCOUNTS):
            config = AccountConfig(id=account_of(a), platform="synthetic", worker_id=worker_of(a))
            await store.create(config)
        registry = WorkerRegistry(redis, stack.keys)
        for w in range(WORKERS):
            info = WorkerInfo(id=f"w{w}", platforms=("synthetic",), capacity=100)
            await registry.heartbeat(info, ttl_s=600)


async def send(stack: Stack, half: int) -> None:
    async with Redis.from_url(stack.redis_url) as redis:
        out = [(stack.keys.worker_stream(w, "ingest"), b) for w, b in batches(half)]
        for start in range(0, len(out), 100):
            await append_many_to(redis, out[start : start + 100], maxlen=100_000)


async def totals(url: str) -> tuple[int, int, int, int]:
    """(comments stored, distinct item ids, crawl runs, sum of their new items)."""
    archive = Archive.open(url, create=False)
    try:
        async with archive.engine.connect() as conn:
            stored = (await conn.execute(select(func.count()).select_from(comments))).scalar()
            distinct = (
                await conn.execute(select(func.count(func.distinct(comments.c.item_id))))
            ).scalar()
            runs = (await conn.execute(select(func.count()).select_from(crawl_runs))).scalar()
            new = (await conn.execute(select(func.sum(crawl_runs.c.new_items)))).scalar()
    finally:
        await archive.close()
    return int(stored or 0), int(distinct or 0), int(runs or 0), int(new or 0)


def stored(url: str) -> int:
    if missing_file(url) is not None:
        return 0  # no Master has created it yet
    try:
        return anyio.run(totals, url)[0]
    except Exception:  # the schema is created by the first Master's first pass
        return 0


def test_a_master_killed_mid_ingest_leaves_no_duplicate_and_no_gap(
    stack: Stack, database_url: str
) -> None:
    stack.extra_env["HISCRM_DATABASE_URL"] = database_url
    anyio.run(prepare, stack)
    anyio.run(send, stack, 0)  # a backlog of 50,000 before any Master runs
    first = stack.master("m1")
    wait_for(lambda: stored(database_url) >= 20_000, timeout=60, what="20,000 items stored")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at = stored(database_url)
    anyio.run(send, stack, 1)  # the rest arrives while no Master runs
    stack.master("m2")  # claims what m1 read and never acknowledged
    total = ACCOUNTS * PER_ACCOUNT
    wait_for(lambda: stored(database_url) >= total, timeout=90, what="all 100,000 items")

    assert killed_at < total  # the kill really was mid-run
    rows, distinct, runs, new = anyio.run(totals, database_url)
    assert rows == distinct == total  # none missing, none twice
    assert runs == total // PER_BATCH  # each batch recorded once, re-read ones included
    assert new == total  # and counted once
    group = "masters"
    for w in range(WORKERS):
        stream = stack.keys.worker_stream(f"w{w}", "ingest")
        wait_for(
            lambda s=stream: stack.r.xpending(s, group)["pending"] == 0,
            what=f"{stream} acknowledged",
        )
    assert stack.r.xlen(stack.keys.deadletter) == 0
    # stored and acknowledged: the batches leave Redis, which carries only the bus
    for w in range(WORKERS):
        stream = stack.keys.worker_stream(f"w{w}", "ingest")
        wait_for(lambda s=stream: stack.r.xlen(s) == 0, what=f"{stream} trimmed")

    # the needle among 100,000, found through the CLI, on the same engine
    result = stack.cli(
        "data", account_of(57), "--grep", "NEEDLE-4711", "--json", "--limit", "10", check=True
    )
    doc = json.loads(result.stdout)
    assert [i["item_id"] for i in doc["items"]] == [f"{account_of(57)}-c321"]
    assert doc["items"][0]["text"] == NEEDLE
    assert doc["comments"] == PER_ACCOUNT
    result = stack.cli("data", account_of(57), "--grep", "独一无二", check=True)
    assert "needle-4711" in result.stdout
