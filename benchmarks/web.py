"""The console's fleet page with many accounts, rendered server-side (issue 14: 1,000
accounts in under 300 ms). A benchmark, not a test.

Seeds a private redis-server (benchmarks/delivery/infra.py starts it) with N accounts
over four live workers whose heartbeats report every task, one applied update per
account (its outcome in the stream) and a tenth of them with an update still pending,
and a fresh SQLite database with a few comments per account; then times GET / (signed
in, as a browser asks for it) against the app in process with httpx, and the parts of
it: collect(), diagnose(), the template.

    .venv/bin/python -m benchmarks.web [--accounts 1000] [--runs 30] [--smoke]

Each run but a smoke run writes its figures into benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from redis.asyncio import Redis

from benchmarks.delivery.figures import figure, write_figures
from benchmarks.delivery.infra import RESULTS, describe_machine, dist, redis_server
from hiscrm_bus.accounts import AccountConfig, AccountUpdate
from hiscrm_bus.messages import AccountConfigUpdateAck, CrawlBatch, CrawledItem
from hiscrm_bus.workers import TaskReport, WorkerInfo, WorkerRegistry
from hiscrm_master.archive import Archive, Arrival
from hiscrm_master.diagnosis import diagnose
from hiscrm_master.snapshot import collect
from hiscrm_master.updates import Updates
from hiscrm_web.app import create_app, templates
from hiscrm_web.auth import Users
from hiscrm_web.settings import WebSettings

WORKERS = ("w1", "w2", "w3", "w4")
USER, PASSWORD = "bench", "a long benchmark password"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BUDGET_MS = 300.0
# its entry in results.json: the title of its section in RESULTS.md (written by hand)
SECTION = "## Web console: the fleet page with 1,000 accounts (issue 14)"


async def seed(redis: Redis, settings: WebSettings, accounts: int) -> None:
    updates = Updates(redis, settings, "bench")
    ids = [f"acc-{n:05d}" for n in range(accounts)]
    owner = {aid: WORKERS[n % len(WORKERS)] for n, aid in enumerate(ids)}
    configs = [
        AccountConfig(
            id=aid,
            platform="synthetic",
            worker_id=owner[aid],
            platform_user_id=f"u{n}",
            login_status="logged_in",
        )
        for n, aid in enumerate(ids)
    ]
    for start in range(0, len(configs), 500):
        await updates.store.create_many(configs[start : start + 500])
    # one update per account, applied: the outcomes stream has one entry per account
    batch = await updates.selection({"name": "shop"})
    results, _sent = await updates.change_many(batch, "admin_update")
    written = [r for r in results if isinstance(r, AccountUpdate)]
    acks = [
        AccountConfigUpdateAck(
            sender=r.worker_id or "-",
            account_id=r.account_id,
            worker_id=r.worker_id or "-",
            applied_version=r.version,
            seen_version=r.version,
            ok=True,
        )
        for r in written
    ]
    await updates.tracker.resolve_many(acks)
    # a tenth with an update in flight
    every = await updates.selection({"name": "new shop"})
    pending = {aid: every[aid] for aid in ids[::10]}
    await updates.change_many(pending, "admin_update")
    registry = WorkerRegistry(redis, settings.keys)
    for worker in WORKERS:
        tasks = {
            aid: TaskReport(applied_version=2, state="running", crawls=3, items=5, last_crawl_at=T0)
            for aid in ids
            if owner[aid] == worker
        }
        info = WorkerInfo(
            id=worker,
            capacity=1000,
            platforms=("synthetic",),
            started_at=T0,
            tasks=tasks,
        )
        await registry.heartbeat(info, ttl_s=3600)
    await Users(redis, settings.keys).add(USER, PASSWORD)


async def seed_database(url: str, accounts: int, per_account: int = 5) -> None:
    archive = Archive.open(url)
    try:
        await archive.ready()
        arrivals = []
        for n in range(accounts):
            aid = f"acc-{n:05d}"
            items = tuple(
                CrawledItem(
                    kind="comment",
                    item_id=f"{aid}-c{k}",
                    text=f"comment {k} of {aid}",
                    author=f"fan{k}",
                    created_at=T0 + timedelta(minutes=k),
                )
                for k in range(per_account)
            )
            batch = CrawlBatch(
                sender=WORKERS[n % len(WORKERS)],
                account_id=aid,
                worker_id=WORKERS[n % len(WORKERS)],
                items=items,
            )
            arrivals.append(Arrival(batch, received_ms=0))
        for start in range(0, len(arrivals), 200):
            await archive.store(arrivals[start : start + 200])
    finally:
        await archive.close()


async def measure(url: str, workdir: Path, accounts: int, runs: int) -> dict[str, object]:
    database = f"sqlite+aiosqlite:///{workdir}/hiscrm.db"
    settings = WebSettings(
        redis_url=url, key_prefix="bench-web:", master_id="web", database_url=database
    )
    redis = Redis.from_url(url)
    try:
        await seed(redis, settings, accounts)
    finally:
        await redis.aclose()
    await seed_database(database, accounts)
    app = create_app(settings)
    timings: dict[str, list[float]] = {
        "page": [],
        "page_cpu": [],  # the process's CPU time (every thread): wall time on an idle machine
        "collect": [],
        "diagnose": [],
        "render": [],
    }
    size = 0
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            form = await client.get("/signin")
            token = re.search(r'name="signin_csrf" value="([^"]+)"', form.text)
            assert token, form.text
            fields = {"user": USER, "password": PASSWORD, "signin_csrf": token.group(1)}
            signed = await client.post("/signin", data=fields)
            assert signed.status_code == 303, signed.text
            for n in range(runs + 3):  # the first three warm up
                started, cpu = time.perf_counter(), time.process_time()
                page = await client.get("/")
                elapsed, used = time.perf_counter() - started, time.process_time() - cpu
                assert page.status_code == 200, page.text[:500]
                assert page.text.count("<tr data-account=") == accounts
                size = len(page.content)
                if n >= 3:
                    timings["page"].append(elapsed)
                    timings["page_cpu"].append(used)
        c = app.state.console
        env = templates()
        for _ in range(runs):
            t0 = time.perf_counter()
            snap = await collect(c.redis, c.settings, archive=c.archive)
            t1 = time.perf_counter()
            result = diagnose(snap)
            t2 = time.perf_counter()
            env.get_template("_fleet_rows.html").render(
                result=result, accounts=result.accounts, filters={"q": ""}
            )
            t3 = time.perf_counter()
            timings["collect"].append(t1 - t0)
            timings["diagnose"].append(t2 - t1)
            timings["render"].append(t3 - t2)
    return {
        "accounts": accounts,
        "runs": runs,
        "page_bytes": size,
        **{name: dist(values) for name, values in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--smoke", action="store_true", help="20 accounts, 3 runs, no results (make bench-smoke)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.accounts, args.runs = 20, 3
    with tempfile.TemporaryDirectory(prefix="hiscrm-bench-web-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as url:
            found = asyncio.run(measure(url, workdir, args.accounts, args.runs))
    print(json.dumps(found, indent=2))
    page = found["page"]
    assert isinstance(page, dict)
    cpu = found["page_cpu"]
    assert isinstance(cpu, dict)
    verdict = "within" if page["p99"] < BUDGET_MS else "OVER"
    print(
        f"GET / with {args.accounts} accounts: p50 {page['p50']:.1f} ms, "
        f"p99 {page['p99']:.1f} ms, max {page['max']:.1f} ms "
        f"({verdict} the {BUDGET_MS:.0f} ms budget); CPU per page p50 {cpu['p50']:.1f} ms, "
        f"p99 {cpu['p99']:.1f} ms; load average {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    if args.smoke:
        print("smoke: the page rendered (too few accounts and runs for the numbers to mean much)")
        return
    name = f"GET / with {args.accounts:,} accounts"
    write_figures(
        RESULTS.parent / "results.json",
        title=SECTION,
        command=" ".join([".venv/bin/python", "-m", "benchmarks.web", *sys.argv[1:]]),
        env=describe_machine(),
        figures=[
            figure(f"{name}, p50", "ms", page["p50"], goal=("value", "<=", BUDGET_MS)),
            figure(f"{name}, p99", "ms", page["p99"], goal=("value", "<=", BUDGET_MS)),
        ],
    )


if __name__ == "__main__":
    main()
