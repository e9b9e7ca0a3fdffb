"""Delivery performance against DESIGN.md §7, side by side with the raw Redis floor.

A benchmark, not a test: it prints what it measured and never fails on the numbers.
Everything runs against a private redis-server on a free loopback port, in one anyio
event loop (asyncio backend), with the hiscrm services in-process:

1. latency — publish → applied → ACK seen by the Master, one worker, p50 / p99; the
   floor is the same round trip with bare redis-py (HSET+PUBLISH → HGETALL → XADD →
   XREAD). The two are interleaved, one round trip each in turn.
2. throughput — updates across many workers (default 100), applied outcomes per second;
   the floor is 100 bare subscribers doing HGETALL+XADD, a pipelining producer and a
   stream reader.
3. reconcile — a worker taking over 10,000 accounts on start; the floor is one
   pipelined HGETALL of every hash.
4. celery — ``app.control.broadcast("ping", reply=True)`` to one Celery worker on the
   same redis-server (Celery lives in its own venv under var/bench, made on demand, so
   the project's venv is left alone).

    .venv/bin/python benchmarks/delivery.py                 # the default, short run
    .venv/bin/python benchmarks/delivery.py --latency-n 5000 --updates 20000 \\
        --reconcile-reps 5 --celery-n 1000                  # a longer one
    .venv/bin/python benchmarks/delivery.py --only latency --no-results
    .venv/bin/python benchmarks/delivery.py --hiredis       # redis-py's C reply parser
    .venv/bin/python benchmarks/delivery.py --smoke         # every scenario, tiny (make test)

The numbers go to stdout as a table and (unless --no-results) into the section
"## Delivery (DESIGN.md §7)" of benchmarks/RESULTS.md (", with hiredis" for --hiredis),
replacing an earlier one. The hiscrm side is instrumented without changing it: the
Master's ACK batch handler and ``Updates.notify`` are wrapped on their instances to
timestamp each update.

``--smoke`` runs every scenario at tiny sizes in a few seconds, so a change to the
library that breaks the benchmark fails ``make test``: it checks that each scenario ran
to completion (every update applied, every account reconciled), never the numbers, and
writes nothing to RESULTS.md. Celery is compared only if already installed.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import redis
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hiscrm_bus.accounts import AccountConfig, decode_hash  # noqa: E402
from hiscrm_bus.connection import connect  # noqa: E402
from hiscrm_bus.messages import AccountConfigUpdateAck  # noqa: E402
from hiscrm_bus.streams import Received, append_many  # noqa: E402
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry  # noqa: E402
from hiscrm_master.service import Master  # noqa: E402
from hiscrm_master.settings import MasterSettings  # noqa: E402
from hiscrm_master.updates import Updates  # noqa: E402
from hiscrm_worker.service import Worker  # noqa: E402
from hiscrm_worker.settings import WorkerSettings  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Delivery (DESIGN.md §7)"
CELERY_VENV = ROOT / "var" / "bench" / "celery-venv"
CELERY = ("celery[redis]",)
now = time.perf_counter
_prefixes = itertools.count()
# --smoke: every scenario, tiny; a flag given explicitly still wins
SMOKE_SIZES: dict[str, Any] = {
    "latency_n": 20,
    "warmup": 5,
    "idle_workers": 3,
    "workers": 4,
    "accounts_per_worker": 1,
    "updates": 40,
    "reconcile_accounts": 200,
    "reconcile_reps": 1,
    "celery_n": 5,
    "no_celery_install": True,
    "no_results": True,
}


# ----------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private, non-persistent redis-server on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]
    with (workdir / "redis.log").open("ab") as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    try:
        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"redis-server did not start on port {port}") from None
                time.sleep(0.02)  # polling a process we just started
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prefix(name: str) -> str:
    return f"bench{next(_prefixes)}-{name}:"


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 500 samples is the 495th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def dist(values_s: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean / max in milliseconds, from seconds."""
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50": quantile(ms, 0.50),
        "p99": quantile(ms, 0.99),
        "mean": sum(ms) / len(ms) if ms else math.nan,
        "max": max(ms) if ms else math.nan,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


async def wait_until(probe: Callable[[], bool], within_s: float, what: str) -> None:
    """Poll an in-process condition (a worker's task table, a counter) for a while."""
    try:
        with anyio.fail_after(within_s):
            while not probe():  # noqa: ASYNC110 - the state polled has no event to wait on
                await anyio.sleep(0.005)
    except TimeoutError:
        raise RuntimeError(f"timed out after {within_s} s waiting for {what}") from None


async def aclose_all(*clients: Any) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        for client in clients:
            with suppress(Exception):  # closing after a failure; nothing to add
                await client.aclose()


class LogTally(logging.Handler):
    """Prints the first few WARNING+ records of each kind, counts all of them."""

    def __init__(self, show: int = 3) -> None:
        super().__init__(logging.WARNING)
        self.show = show
        self.counts: Counter[tuple[str, str]] = Counter()
        self.setFormatter(logging.Formatter("  [log] %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, str(record.msg))
        self.counts[key] += 1
        if self.counts[key] <= self.show:
            sys.stderr.write(self.format(record) + "\n")

    def since(self, before: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
        return self.counts - before


def matching(counts: Counter[tuple[str, str]], needle: str) -> int:
    return sum(n for (_name, msg), n in counts.items() if needle in msg)


# ----------------------------------------------------------------------------- 1. latency


class FloorRoundTrip:
    """The bare redis-py round trip: HSET+PUBLISH, a subscriber doing HGETALL+XADD, XREAD."""

    def __init__(self, url: str) -> None:
        p = prefix("floor-rt")
        self.hash, self.channel, self.stream = f"{p}account", f"{p}control", f"{p}acks"
        self.master = Redis.from_url(url)
        self.worker = Redis.from_url(url)
        self.sub = Redis.from_url(url)
        self.last_id = "0-0"
        self.version = 0

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        pubsub = self.sub.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while (await pubsub.get_message(timeout=1)) is None:
                pass  # the subscribe confirmation
            task_status.started()
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is None or msg["type"] != "message":
                    continue
                notice = json.loads(msg["data"])
                config = await self.worker.hgetall(self.hash)
                await self.worker.xadd(
                    self.stream,
                    {"account_id": notice["account_id"], "version": config[b"config_version"]},
                    maxlen=100_000,
                    approximate=True,
                )
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def once(self) -> float:
        self.version += 1
        version = str(self.version).encode()
        notice = json.dumps(
            {"type": "config_update", "account_id": "acc", "config_version": self.version}
        )
        t0 = now()
        async with self.master.pipeline(transaction=False) as pipe:
            pipe.hset(self.hash, mapping={"name": f"n{self.version}", "config_version": version})
            pipe.publish(self.channel, notice)
            await pipe.execute()
        while True:
            reply: Any = await self.master.xread({self.stream: self.last_id}, count=10, block=5000)
            if not reply:
                raise RuntimeError("floor: no entry within 5 s")
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    self.last_id = entry_id
                    if fields[b"version"] == version:
                        return now() - t0

    async def aclose(self) -> None:
        await aclose_all(self.master, self.worker, self.sub)


async def bench_latency(  # noqa: PLR0915 - one measurement, read top to bottom
    url: str, n: int, warmup: int, workdir: Path, idle_workers: int = 0
) -> dict[str, Any]:
    p = prefix("latency")
    msettings = MasterSettings(redis_url=url, key_prefix=p, master_id="bench-master")
    wsettings = WorkerSettings(
        redis_url=url,
        key_prefix=p,
        worker_id="bench-w1",
        platforms=("synthetic",),
        data_dir=workdir / "latency-worker",
    )
    mredis = await connect(msettings)
    wredis = await connect(wsettings)
    credis = await connect(msettings)
    master = Master(msettings, mredis)
    worker = Worker(wsettings, wredis)
    updates = Updates(credis, msettings, "bench")
    floor = FloorRoundTrip(url)
    # a fleet around the one worker measured: registered, alive, idle (the Master reads
    # every known worker's streams)
    registry = WorkerRegistry(credis, msettings.keys)
    for k in range(idle_workers):
        await registry.heartbeat(WorkerInfo(id=f"idle-w{k}"), ttl_s=3600)

    # instrumentation only: when the Master's ACK handler sees each update, and returns
    seen: dict[str, float] = {}
    closed: dict[str, float] = {}
    handler = master.on_acks

    async def on_acks(received: list[Received]) -> None:
        t = now()
        ids = [i for i in (getattr(r.message, "update_id", "") for r in received) if i]
        for update_id in ids:
            seen.setdefault(update_id, t)
        await handler(received)
        t = now()
        for update_id in ids:
            closed.setdefault(update_id, t)

    master.on_acks = on_acks  # type: ignore[method-assign]
    # and when Updates.notify starts its one round trip that records the pending entry
    # and PUBLISHes (after the versioned write): DESIGN §7's round trip starts there
    publishing: dict[str, float] = {}
    notify = updates.notify

    async def timed_notify(results: Sequence[Any], reason: Any) -> Any:
        t = now()
        sent = await notify(results, reason)
        for message in sent:
            if message is not None:
                publishing.setdefault(message.update_id, t)
        return sent

    updates.notify = timed_notify  # type: ignore[method-assign]
    # the one-call path (the owner stays) records and PUBLISHes inside its Lua call:
    # the round trip starts when that call is sent (its ninth argument is the update id)
    change_call = updates._change

    async def timed_change(*, keys: list[Any], args: list[Any]) -> Any:
        publishing.setdefault(str(args[8]), now())
        return await change_call(keys=keys, args=args)

    updates._change = timed_change  # type: ignore[assignment]

    account = "lat-1"
    sent_at: dict[str, float] = {}
    published: dict[str, float] = {}
    e2e: dict[str, float] = {}
    recorded_ms: dict[str, float] = {}
    floor_s: list[float] = []
    statuses: Counter[str] = Counter()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(floor.serve)
            await tg.start(master.run)
            await tg.start(worker.run)
            await updates.create(  # as `hiscrm account add` does
                AccountConfig(id=account, platform="synthetic", worker_id=worker.id)
            )
            await wait_until(lambda: worker.runner.get(account) is not None, 10, "the task")
            for i in range(warmup + n):
                measured = i >= warmup
                # the floor's round trip, then ours, in turn
                f = await floor.once()
                after = await updates.tracker.last_outcome_id()
                t0 = now()
                _write, sent = await updates.change(account, {"name": f"n{i}"}, "admin_update")
                t_pub = now()
                assert sent is not None
                found = await updates.tracker.wait_outcomes([sent.update_id], after, 10)
                t1 = now()
                outcome = found.get(sent.update_id)
                statuses[outcome.status if outcome else "timeout"] += 1
                if not measured or outcome is None:
                    continue
                floor_s.append(f)
                sent_at[sent.update_id] = t0
                published[sent.update_id] = t_pub - t0
                e2e[sent.update_id] = t1 - t0
                recorded_ms[sent.update_id] = outcome.latency_ms
            await anyio.sleep(0.2)  # let the last handler return
            tg.cancel_scope.cancel()
    finally:
        await floor.aclose()
        await aclose_all(mredis, wredis, credis)
    ids = list(e2e)
    return {
        "n": n,
        "warmup": warmup,
        "idle_workers": idle_workers,
        "statuses": dict(statuses),
        "floor": dist(floor_s),
        "published": dist([published[u] for u in ids]),
        "ack_seen": dist([seen[u] - sent_at[u] for u in ids if u in seen]),
        "pub_ack_seen": dist([seen[u] - publishing[u] for u in ids if u in seen]),
        "resolved": dist([closed[u] - sent_at[u] for u in ids if u in closed]),
        "e2e": dist([e2e[u] for u in ids]),
        "recorded": dist([recorded_ms[u] / 1000 for u in ids]),
        "acks_processed": master.acks.processed,
    }


# ----------------------------------------------------------------------------- 2. throughput


async def floor_throughput(url: str, workers: int, total: int, batch: int) -> dict[str, Any]:  # noqa: PLR0915 - one measurement, read top to bottom
    p = prefix("floor-tp")
    stream = f"{p}acks"
    producer = Redis.from_url(url)
    reader = Redis.from_url(url)
    subs = [Redis.from_url(url) for _ in range(workers)]
    clients = [Redis.from_url(url) for _ in range(workers)]
    ready = 0

    async def subscriber(k: int) -> None:
        nonlocal ready
        pubsub = subs[k].pubsub()
        client = clients[k]
        try:
            await pubsub.subscribe(f"{p}control:{k}")
            while (await pubsub.get_message(timeout=1)) is None:
                pass
            ready += 1
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is None or msg["type"] != "message":
                    continue
                notice = json.loads(msg["data"])
                config = await client.hgetall(f"{p}account:{notice['account_id']}")
                await client.xadd(
                    stream,
                    {"account_id": notice["account_id"], "version": config[b"config_version"]},
                    maxlen=100_000,
                    approximate=True,
                )
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    done_at = 0.0
    done = anyio.Event()
    got = 0

    async def consume(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        nonlocal done_at, got
        last = "0-0"
        task_status.started()
        while got < total:
            reply: Any = await reader.xread({stream: last}, count=1000, block=1000)
            for _s, entries in reply or []:
                last = entries[-1][0]
                got += len(entries)
        done_at = now()
        done.set()

    try:
        async with anyio.create_task_group() as tg:
            for k in range(workers):
                tg.start_soon(subscriber, k)
            await wait_until(lambda: ready == workers, 30, "floor subscribers")
            async with anyio.create_task_group() as run:
                await run.start(consume)
                t0 = now()
                version = 0
                sent = 0
                while sent < total:
                    version += 1
                    async with producer.pipeline(transaction=False) as pipe:
                        for k in range(min(batch, total - sent)):
                            w = k % workers
                            acc = f"a{k}"
                            pipe.hset(f"{p}account:{acc}", mapping={"name": f"r{version}"})
                            pipe.hincrby(f"{p}account:{acc}", "config_version", 1)
                            pipe.publish(f"{p}control:{w}", json.dumps({"account_id": acc}))
                            sent += 1
                        await pipe.execute()
                t_sent = now()
                with anyio.fail_after(max(60, total / 50)):
                    await done.wait()
            tg.cancel_scope.cancel()
    finally:
        await aclose_all(producer, reader, *subs, *clients)
    return {
        "total": total,
        "completed": got,
        "seconds": done_at - t0,
        "per_s": got / (done_at - t0),
        "send_s": t_sent - t0,
    }


async def bench_throughput(  # noqa: PLR0915 - one measurement, read top to bottom
    url: str, workers: int, per_worker: int, total: int, workdir: Path
) -> dict[str, Any]:
    p = prefix("throughput")
    msettings = MasterSettings(redis_url=url, key_prefix=p, master_id="bench-master")
    admin = await connect(msettings)
    mredis = await connect(msettings)
    updates = Updates(admin, msettings, "bench")
    worker_ids = [f"tp-w{k}" for k in range(workers)]
    accounts = [f"tp-a{k}-{j}" for j in range(per_worker) for k in range(workers)]
    owner = {f"tp-a{k}-{j}": f"tp-w{k}" for j in range(per_worker) for k in range(workers)}
    for acc in accounts:
        await updates.store.create(
            AccountConfig(id=acc, platform="synthetic", worker_id=owner[acc])
        )
    master = Master(msettings, mredis)
    wclients: list[Redis] = []
    fleet: list[Worker] = []
    for wid in worker_ids:
        wsettings = WorkerSettings(
            redis_url=url,
            key_prefix=p,
            worker_id=wid,
            platforms=("synthetic",),
            data_dir=workdir / "tp" / wid,
        )
        client = await connect(wsettings)
        wclients.append(client)
        fleet.append(Worker(wsettings, client))

    done_at = 0.0
    done = anyio.Event()
    statuses: Counter[str] = Counter()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(master.run)
            t_start = now()
            for w in fleet:
                await tg.start(w.run)
            fleet_start_s = now() - t_start
            await wait_until(
                lambda: all(len(w.applied) == per_worker for w in fleet), 60, "the fleet"
            )
            # steady state: the Master reads every worker's stream (it has read the ACK
            # each worker sent for its accounts on start)
            await wait_until(
                lambda: master.acks.processed >= len(accounts), 60, "the Master to hear the fleet"
            )
            master_caught_up_s = now() - t_start
            raws = await updates.store.get_raw(accounts)
            current = {a: decode_hash(r) for a, r in zip(accounts, raws, strict=True)}
            after = await updates.tracker.last_outcome_id()
            stats_before = await updates.tracker.stats()
            acks_before = master.acks.processed

            async def count_outcomes(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                nonlocal done_at
                task_status.started()
                async for outcome in updates.tracker.watch_outcomes(after):
                    statuses[outcome.status] += 1
                    if sum(statuses.values()) >= total:
                        done_at = now()
                        done.set()
                        return

            async with anyio.create_task_group() as run:
                await run.start(count_outcomes)
                t0 = now()
                sent = 0
                rnd = 0
                while sent < total:
                    chunk = accounts[: min(len(accounts), total - sent)]
                    batch = {a: (current[a], {"name": f"r{rnd}"}) for a in chunk}
                    results, notices = await updates.change_many(batch, "admin_update")
                    errors = [r for r in results if isinstance(r, Exception)]
                    if errors:
                        raise RuntimeError(f"change_many refused: {errors[0]}")
                    sent += sum(1 for m in notices if m is not None)
                    rnd += 1
                t_sent = now()
                with anyio.move_on_after(max(60, total / 20)):
                    await done.wait()
                run.cancel_scope.cancel()
            stats_after = await updates.tracker.stats()
            acks = master.acks.processed - acks_before
            tg.cancel_scope.cancel()
    finally:
        await aclose_all(admin, mredis, *wclients)
    end = done_at or now()
    completed = sum(statuses.values())
    return {
        "workers": workers,
        "accounts": len(accounts),
        "total": total,
        "completed": completed,
        "applied": statuses.get("applied", 0),
        "statuses": dict(statuses),
        "seconds": end - t0,
        "per_s": statuses.get("applied", 0) / (end - t0),
        "send_s": t_sent - t0,
        "acks": acks,
        "retried": stats_after.get("retried", 0) - stats_before.get("retried", 0),
        "fleet_start_s": fleet_start_s,
        "master_caught_up_s": master_caught_up_s,
    }


async def bench_master_drain(url: str, total: int) -> dict[str, Any]:
    """The Master alone: ``total`` pending updates and their ACKs already in the owning
    worker's ACK stream (as from a worker that is not running), then time the Master
    until it read them all."""
    p = prefix("drain")
    msettings = MasterSettings(
        redis_url=url, key_prefix=p, master_id="bench-master", ack_timeout_s=600
    )
    admin = await connect(msettings)
    mredis = await connect(msettings)
    updates = Updates(admin, msettings, "bench")
    ghost = "ghost-w"
    ids = [f"dr-{i:05d}" for i in range(total)]
    try:
        await create_accounts(updates, ids, ghost)
        raws = await updates.store.get_raw(ids)
        batch = {a: (decode_hash(r), {"name": "x"}) for a, r in zip(ids, raws, strict=True)}
        _results, notices = await updates.change_many(batch, "admin_update")
        acks = [
            AccountConfigUpdateAck(
                sender=ghost,
                update_id=m.update_id,
                account_id=m.account_id,
                worker_id=ghost,
                applied_version=m.config_version,
                seen_version=m.config_version,
                ok=True,
            )
            for m in notices
            if m is not None
        ]
        # the ghost's own ACK stream, and the ghost in the worker index as a live worker
        # (as its heartbeat would put it there): the Master reads the streams of the
        # workers it knows, and accepts ACKs only from an account's owner
        stream = msettings.keys.worker_stream(ghost, "acks")
        await append_many(admin, stream, acks, msettings.stream_maxlen)
        await WorkerRegistry(admin, msettings.keys).heartbeat(WorkerInfo(id=ghost), ttl_s=600)
        master = Master(msettings, mredis)
        async with anyio.create_task_group() as tg:
            t0 = now()
            tg.start_soon(master.run)
            await wait_until(lambda: master.acks.processed >= len(acks), 120, "the Master")
            seconds = now() - t0
            tg.cancel_scope.cancel()
        applied = (await updates.tracker.stats()).get("applied", 0)
    finally:
        await aclose_all(admin, mredis)
    return {"acks": len(acks), "applied": applied, "seconds": seconds, "per_s": len(acks) / seconds}


# ----------------------------------------------------------------------------- 3. reconcile


async def create_accounts(updates: Updates, ids: Sequence[str], worker_id: str) -> None:
    """AccountStore.create for every id, sixteen at a time (setup, not measured)."""
    todo = iter(ids)

    async def lane() -> None:
        for account_id in todo:
            config = AccountConfig(id=account_id, platform="synthetic", worker_id=worker_id)
            await updates.store.create(config)

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(lane)


def time_calls(obj: Any, names: Sequence[str], spent: dict[str, float]) -> None:
    """Instrumentation: wrap async methods of one instance to add up their wall time."""
    for name in names:
        method = getattr(obj, name)

        async def timed(*a: Any, _m: Any = method, _n: str = name, **kw: Any) -> Any:
            t = now()
            try:
                return await _m(*a, **kw)
            finally:
                spent[_n] = spent.get(_n, 0.0) + now() - t

        setattr(obj, name, timed)


async def reconcile_once(
    wsettings: WorkerSettings, client: Redis, ids: Sequence[str]
) -> dict[str, float]:
    """A fresh Worker with its TaskRunner running: time reconcile() (and its Redis reads),
    until every task has left `starting`, and one heartbeat carrying every task's report."""
    worker = Worker(wsettings, client)
    spent: dict[str, float] = {}
    time_calls(worker.store, ("ids_of_worker", "versions", "get_each"), spent)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.runner.run)
        t0 = now()
        await worker.reconcile()
        rec = now() - t0
        assert len(worker.applied) == len(ids), len(worker.applied)
        tasks = [worker.runner.get(i) for i in ids]
        await wait_until(
            lambda: all(t is not None and t.state != "starting" for t in tasks), 120, "tasks"
        )
        settle = now() - t0
        t1 = now()
        await worker.heartbeat()
        hb = now() - t1
        tg.cancel_scope.cancel()
    return {"reconcile": rec, "settle": settle, "heartbeat": hb, **spent}


async def bench_reconcile(  # noqa: PLR0915 - one measurement, read top to bottom
    url: str, count: int, reps: int, workdir: Path, tally: LogTally
) -> dict[str, Any]:
    p = prefix("reconcile")
    wid = "recon-w"
    wsettings = WorkerSettings(
        redis_url=url,
        key_prefix=p,
        worker_id=wid,
        platforms=("synthetic",),
        data_dir=workdir / "recon-worker",
    )
    keys = wsettings.keys
    client = await connect(wsettings)
    bare = Redis.from_url(url)
    ids = [f"rc-{i:05d}" for i in range(count)]
    out: dict[str, Any] = {"accounts": count, "reps": reps}
    try:
        t = now()
        await create_accounts(Updates(client, wsettings, "bench"), ids, wid)
        out["setup_s"] = now() - t

        # the floor: which accounts, then every hash, pipelined
        floors, floors_same = [], []
        for _ in range(reps):
            t0 = now()
            members: Any = await bare.smembers(keys.worker_accounts(wid))
            async with bare.pipeline(transaction=False) as pipe:
                for m in members:
                    pipe.hgetall(keys.account(m.decode()))
                raws = await pipe.execute()
            floors.append(now() - t0)
            assert len(raws) == count
            # the same round trips as Worker.reconcile, with no Python work in between
            t0 = now()
            members = await bare.smembers(keys.worker_accounts(wid))
            names = sorted(m.decode() for m in members)
            async with bare.pipeline(transaction=False) as pipe:
                for m in names:
                    pipe.hget(keys.account(m), "config_version")
                await pipe.execute()
            async with bare.pipeline(transaction=False) as pipe:
                for m in names:
                    pipe.hgetall(keys.account(m))
                await pipe.execute()
            async with bare.pipeline(transaction=False) as pipe:
                for m in names:
                    pipe.xadd(f"{p}floor-acks", {"account_id": m, "v": "1"}, maxlen=100_000)
                await pipe.execute()
            floors_same.append(now() - t0)
        out["floor_s"] = floors
        out["floor_same_s"] = floors_same

        # Worker.reconcile with its TaskRunner running, on a fresh Worker each time
        recs, settles = [], []
        before = tally.counts.copy()
        for _ in range(reps):
            gc.collect()  # the previous rep's 10,000 tasks are garbage now
            one = await reconcile_once(wsettings, client, ids)
            recs.append(one["reconcile"])
            settles.append(one["settle"])
            out["heartbeat_s"] = one["heartbeat"]
            if one["reconcile"] <= min(recs):
                out["phases"] = one
            out["hb_bytes"] = await bare.hstrlen(keys.worker(wid), "tasks")
        out["reconcile_s"] = recs
        out["settle_s"] = settles
        out["dropped_reconcile_only"] = matching(tally.since(before), "outgoing queue full")

        # the whole worker: from run() until every account is applied and every task settled
        before = tally.counts.copy()
        gc.collect()
        worker = Worker(wsettings, client)
        async with anyio.create_task_group() as tg:
            t0 = now()
            await tg.start(worker.run)  # returns after the first reconcile
            out["run_ready_s"] = now() - t0
            out["run_applied"] = len(worker.applied)
            tasks = [worker.runner.get(i) for i in ids]
            await wait_until(
                lambda: all(t is not None and t.state != "starting" for t in tasks), 120, "tasks"
            )
            out["run_settled_s"] = now() - t0
            await anyio.sleep(0.5)  # let the event sender drain what it kept
            tg.cancel_scope.cancel()
        out["dropped_full_run"] = matching(tally.since(before), "outgoing queue full")
    finally:
        await aclose_all(client, bare)
    return out


# ----------------------------------------------------------------------------- 4. celery

CELERY_APP = """
import os
from celery import Celery

app = Celery("hiscrm_bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
"""

CELERY_CLIENT = """
import json, os, sys, time
from celery_app import app

node = os.environ["BENCH_NODE"]
n, warmup = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 60
while not app.control.ping(destination=[node], timeout=0.5):
    if time.monotonic() > deadline:
        sys.exit("celery worker never answered")
samples, missing = [], 0
for i in range(warmup + n):
    t0 = time.perf_counter()
    replies = app.control.broadcast("ping", reply=True, destination=[node], limit=1, timeout=5)
    dt = time.perf_counter() - t0
    if not replies:
        missing += 1
    elif i >= warmup:
        samples.append(dt)
print(json.dumps({"samples": samples, "missing": missing}))
"""


def celery_python(install: bool) -> tuple[str | None, str]:
    """An interpreter that can import celery (ours, or var/bench/celery-venv)."""
    probe = [sys.executable, "-c", "import celery"]
    if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return sys.executable, "the project venv"
    py = CELERY_VENV / "bin" / "python"
    if not py.exists() and install:
        print("  creating var/bench/celery-venv (pip install 'celery[redis]') …", flush=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(CELERY_VENV)], check=True)
            subprocess.run(
                [
                    str(py),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "celery[redis]",
                ],
                check=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"could not install celery: {exc}"
    if not py.exists():
        return None, "celery is not installed (run without --no-celery-install)"
    return str(py), str(CELERY_VENV.relative_to(ROOT))


def bench_celery(url: str, n: int, warmup: int, workdir: Path, install: bool) -> dict[str, Any]:
    py, where = celery_python(install)
    if py is None:
        return {"skipped": where}
    version = subprocess.run(
        [py, "-c", "import celery, kombu; print(celery.__version__, kombu.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    appdir = workdir / "celery"
    appdir.mkdir(exist_ok=True)
    (appdir / "celery_app.py").write_text(CELERY_APP)
    (appdir / "client.py").write_text(CELERY_CLIENT)
    node = "hiscrmbench@bench"
    broker = url.rsplit("/", 1)[0] + "/1"  # same redis-server, its own database
    env = dict(os.environ, BENCH_BROKER=broker, BENCH_NODE=node, PYTHONPATH=str(appdir))
    env.pop("PYTHONSTARTUP", None)
    worker_cmd = [py, "-m", "celery", "-A", "celery_app", "worker", "--pool", "solo", "-n", node]
    worker_cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"]
    with (appdir / "worker.log").open("ab") as log:
        proc = subprocess.Popen(worker_cmd, cwd=appdir, env=env, stdout=log, stderr=log)
    try:
        client = subprocess.run(
            [py, "client.py", str(n), str(warmup)],
            cwd=appdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(120, n * 0.5),
            check=False,
        )
        if client.returncode != 0:
            tail = (client.stderr or client.stdout).strip().splitlines()[-3:]
            return {"skipped": "celery client failed: " + " | ".join(tail)}
        data = json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "celery": version[0],
        "kombu": version[1],
        "where": where,
        "missing": data["missing"],
        "rt": dist(data["samples"]),
    }


# ----------------------------------------------------------------------------- report


@dataclass
class Table:
    rows: list[tuple[str, ...]] = field(default_factory=list)
    head: tuple[str, ...] = ("measure", "hiscrm", "raw Redis floor", "ratio", "DESIGN §7 budget")

    def add(self, *cells: str) -> None:
        self.rows.append(cells)

    def text(self) -> str:
        widths = [max(len(r[i]) for r in [self.head, *self.rows]) for i in range(len(self.head))]
        line = "  ".join("-" * w for w in widths)
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join([fmt.format(*self.head), line, *(fmt.format(*r) for r in self.rows)])

    def markdown(self) -> str:
        out = ["| " + " | ".join(self.head) + " |", "|" + "---|" * len(self.head)]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(out)


def ms(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"


def x(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.2f}×"


def report_latency(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    lat = r.get("latency")
    if lat:
        f = lat["floor"]
        idle = lat.get("idle_workers", 0)
        one = f"1 worker (+{idle} idle)" if idle else "1 worker"
        for key, label, budget in (
            ("pub_ack_seen", "PUBLISH → ACK seen by the Master", "≤ 1.5×"),
            ("ack_seen", "change() → ACK seen by the Master", ""),
            ("resolved", "change() → Master's ACK handler done", ""),
            ("e2e", "change() → outcome seen by the caller", ""),
        ):
            d = lat[key]
            for q in ("p50", "p99"):
                t.add(f"{one}, {label}, {q}", ms(d[q]), ms(f[q]), x(ratio(d[q], f[q])), budget)
        rec = lat["recorded"]
        t.add(
            f"{one}, tracker latency_ms p50 / p99",
            f"{rec['p50']:.0f} / {rec['p99']:.0f} ms",
            "",
            "",
            "(Redis clock, whole ms)",
        )
        notes.append(
            f"latency: {lat['n']} interleaved round trips each, after {lat['warmup']} unmeasured; "
            f"outcomes {lat['statuses']}; {idle} more workers registered, idle"
            + (
                " (the floor shares the event loop with the Master, which names every "
                "worker's stream in each read it issues: compare absolute times with a run "
                "without them)"
                if idle
                else ""
            )
            + "; "
            f"`Updates.change` alone (HGETALL + versioned write, "
            f"pending record, PUBLISH) p50 {ms(lat['published']['p50'])}, p99 "
            f"{ms(lat['published']['p99'])}; the floor's clock starts at its HSET+PUBLISH "
            "pipeline."
        )
        a50 = ratio(lat["pub_ack_seen"]["p50"], f["p50"])
        a99 = ratio(lat["pub_ack_seen"]["p99"], f["p99"])
        c50 = ratio(lat["ack_seen"]["p50"], f["p50"])
        verdict = "within" if max(a50, a99) <= 1.5 else "outside"
        says.append(
            f"With one worker, an update's ACK reaches the Master "
            f"{ms(lat['pub_ack_seen']['p50'])} (p50) and {ms(lat['pub_ack_seen']['p99'])} (p99) "
            f"after its PUBLISH, {x(a50)} and {x(a99)} the bare HSET+PUBLISH → HGETALL → XADD → "
            f"XREAD round trip ({ms(f['p50'])} / {ms(f['p99'])}), so {verdict} the 1.5× budget. "
            f"Counted from the call to `Updates.change` it is {ms(lat['ack_seen']['p50'])} "
            f"({x(c50)}): the versioned write and the pending record that must precede the "
            f"notice cost {ms(lat['published']['p50'])} before anything is published."
        )


def report_throughput(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    tp = r.get("throughput")
    if tp:
        fl = tp["floor"]
        rr = ratio(tp["per_s"], fl["per_s"])
        t.add(
            f"{tp['workers']} workers, applied updates/s",
            f"{tp['per_s']:.0f}/s",
            f"{fl['per_s']:.0f}/s",
            x(rr),
            "≥ 0.5×",
        )
        notes.append(
            f"throughput: {tp['total']} updates over {tp['accounts']} accounts "
            f"({tp['workers']} in-process workers, one Master, one event loop); outcomes "
            f"{tp['statuses']}, {tp['acks']} ACKs read by the Master, {tp['retried']} retries; "
            f"all sent after {tp['send_s']:.2f} s, last outcome after {tp['seconds']:.2f} s "
            f"(floor: sent {fl['send_s']:.2f} s, done {fl['seconds']:.2f} s); "
            f"the {tp['workers']} workers started in {tp['fleet_start_s']:.2f} s and the Master "
            f"had read every one's start-up ACKs after {tp['master_caught_up_s']:.2f} s "
            "(measuring began then)."
        )
        if tp["retried"]:
            notes.append(
                f"the {tp['retried']} retries are the sweeper re-sending updates whose ACKs were "
                "already in the stream, unread: the Master fell more than ack_timeout_s behind."
            )
        dr = tp["drain"]
        notes.append(
            f"Master alone: with {dr['acks']} pending updates and their ACKs already in the "
            f"stream, one Master read and resolved them at {dr['per_s']:.0f} ACKs/s "
            f"({dr['seconds']:.2f} s, {dr['applied']} applied) — "
            f"{x(ratio(dr['per_s'], fl['per_s']))} the floor's end-to-end rate."
        )
        verdict = "meets" if rr >= 0.5 else "misses"
        says.append(
            f"Across {tp['workers']} workers hiscrm completed {tp['per_s']:.0f} applied "
            f"updates/s against the floor's {fl['per_s']:.0f}/s ({x(rr)}), so it {verdict} "
            "the half-the-floor budget; both sides share one Python event loop on this "
            "machine, so this compares Python work per update at least as much as Redis."
        )


def report_reconcile(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    rc = r.get("reconcile")
    if rc:
        best = min(rc["reconcile_s"]) * 1000
        floor = min(rc["floor_s"]) * 1000
        same = min(rc["floor_same_s"]) * 1000
        n = rc["accounts"]
        t.add(
            f"reconcile {n:,} accounts (Worker.reconcile)",
            ms(best),
            ms(floor),
            x(ratio(best, floor)),
            "well under 1 s",
        )
        t.add(
            "  … against the same 4 round trips bare",
            ms(best),
            ms(same),
            x(ratio(best, same)),
            "",
        )
        t.add(
            f"  … Worker.run until ready ({rc['run_applied']:,} applied)",
            ms(rc["run_ready_s"] * 1000),
            "",
            "",
            "",
        )
        notes.append(
            f"reconcile: best of {rc['reps']} (all: "
            + ", ".join(f"{v * 1000:.0f}" for v in rc["reconcile_s"])
            + " ms; floor HGETALL-only "
            + ", ".join(f"{v * 1000:.0f}" for v in rc["floor_s"])
            + f" ms); every task out of `starting` after "
            f"{min(rc['settle_s']) * 1000:.0f} ms; whole worker settled after "
            f"{rc['run_settled_s'] * 1000:.0f} ms; one heartbeat with {n:,} task reports "
            f"{rc['heartbeat_s'] * 1000:.0f} ms (its `tasks` field {rc['hb_bytes'] / 1e6:.1f} MB); "
            f"task-status events dropped (outgoing queue full): {rc['dropped_reconcile_only']} "
            f"in the reconcile-only runs, {rc['dropped_full_run']} in the full run; "
            f"creating the accounts took {rc['setup_s']:.1f} s (not measured)."
        )
        ph = rc["phases"]
        reads = ph.get("ids_of_worker", 0) + ph.get("versions", 0) + ph.get("get_each", 0)
        notes.append(
            f"inside the best `Worker.reconcile` ({ms(best)}): SMEMBERS "
            f"{ms(ph.get('ids_of_worker', 0) * 1000)}, pipelined HGET of every version "
            f"{ms(ph.get('versions', 0) * 1000)}, pipelined HGETALL of every hash "
            f"{ms(ph.get('get_each', 0) * 1000)}; the remaining {ms(best - reads * 1000)} is the "
            "per-account apply loop (decode, validate, start a task), the ACK pipeline and, "
            "while that pipeline is awaited, the first steps of the 10,000 tasks it has "
            "just started (each logs that it waits for a login)."
        )
        verdict = "well under" if best < 500 else "under" if best < 1000 else "over"
        says.append(
            f"A worker taking over {n:,} accounts reconciles them in {ms(best)}, "
            f"{verdict} a second: {x(ratio(best, floor))} one pipelined HGETALL of every "
            f"hash ({ms(floor)}) and {x(ratio(best, same))} the same four pipelined round trips "
            f"bare ({ms(same)}); its own Redis reads take {ms(reads * 1000)}, the rest is "
            "Python work per account."
            + (
                f" The floor alone needs {ms(floor)} with redis-py's pure-Python reply parser, "
                "so the budget is out of reach without hiredis whatever the worker does."
                if floor > 500 and "(no hiredis)" in r.get("env", "")
                else ""
            )
        )


def report_celery(r: dict[str, Any], t: Table, notes: list[str], says: list[str]) -> None:
    lat = r.get("latency")
    ce = r.get("celery")
    if ce:
        if "skipped" in ce:
            t.add("Celery broadcast(reply=True)", "skipped", "", "", "")
            notes.append(f"celery: skipped — {ce['skipped']}")
        else:
            f: dict[str, float] | None = (lat or {}).get("floor")
            for q in ("p50", "p99"):
                t.add(
                    f"Celery broadcast(reply=True), 1 worker, {q}",
                    ms(ce["rt"][q]) + " (Celery)",
                    ms(f[q]) if f else "",
                    x(ratio(ce["rt"][q], f[q])) if f else "",
                    "report",
                )
            notes.append(
                f"celery: {ce['rt']['n']} `control.broadcast('ping', reply=True, limit=1)` to one "
                f"solo-pool worker, celery {ce['celery']} / kombu {ce['kombu']} from {ce['where']},"
                f" same redis-server (db 1); {ce['missing']} without a reply."
            )
            if lat and f:
                says.append(
                    f"Celery's `control.broadcast(reply=True)` to one worker on the same Redis "
                    f"takes {ms(ce['rt']['p50'])} at p50 and {ms(ce['rt']['p99'])} at p99, "
                    f"{x(ratio(ce['rt']['p50'], f['p50']))} the floor and "
                    f"{x(ratio(ce['rt']['p50'], lat['e2e']['p50']))} hiscrm's whole "
                    f"caller-visible round trip ({ms(lat['e2e']['p50'])}: versioned write, "
                    "tracked delivery, recorded outcome); a broadcast that gets no reply is "
                    "simply gone, with no retry and no record."
                )


def build_report(r: dict[str, Any]) -> tuple[Table, list[str], list[str]]:
    """The table, the notes under it, and the sentences of the interpretation."""
    t = Table()
    notes: list[str] = []
    says: list[str] = []
    for part in (report_latency, report_throughput, report_reconcile, report_celery):
        part(r, t, notes, says)
    return t, notes, says


def write_results(
    path: Path, *, title: str, command: str, env: str, t: Table, notes: list[str], says: list[str]
) -> None:
    """Replace the section headed exactly ``title`` (or append it)."""
    intro = (
        f"`{command}` — {env}. Each hiscrm figure is measured in the same run as its floor, "
        "the same round trip written with bare redis-py; ratios are hiscrm ÷ floor."
    )
    body = [
        title,
        "",
        textwrap.fill(intro, 92, break_long_words=False, break_on_hyphens=False),
        "",
        t.markdown(),
        "",
        *(
            textwrap.fill(
                n, 92, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False
            )
            for n in notes
        ),
        "",
        textwrap.fill(" ".join(says), 92, break_on_hyphens=False),
    ]
    lines = (path.read_text() if path.exists() else "# Benchmark notes\n").splitlines()
    if title in lines:
        start = lines.index(title)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        lines[start:end] = [*body, ""] if end < len(lines) else body
    else:
        while lines and not lines[-1].strip():
            lines.pop()
        lines += ["", *body]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


# ----------------------------------------------------------------------------- main


async def run_all(
    args: argparse.Namespace, url: str, workdir: Path, tally: LogTally
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    flush = redis.Redis.from_url(url)
    try:
        if "latency" in args.only:
            print(f"1/4 latency: {args.latency_n} round trips each (+{args.warmup} warm-up) …")
            with anyio.fail_after(600):
                results["latency"] = await bench_latency(
                    url, args.latency_n, args.warmup, workdir, args.idle_workers
                )
            flush.flushall()
        if "throughput" in args.only:
            print(f"2/4 throughput: {args.updates} updates across {args.workers} workers …")
            with anyio.fail_after(900):
                floor = await floor_throughput(url, args.workers, args.updates, args.workers)
                flush.flushall()
                tp = await bench_throughput(
                    url, args.workers, args.accounts_per_worker, args.updates, workdir
                )
            tp["floor"] = floor
            flush.flushall()
            with anyio.fail_after(300):
                tp["drain"] = await bench_master_drain(url, args.updates)
            results["throughput"] = tp
            flush.flushall()
        if "reconcile" in args.only:
            print(f"3/4 reconcile: {args.reconcile_accounts} accounts …")
            with anyio.fail_after(900):
                results["reconcile"] = await bench_reconcile(
                    url, args.reconcile_accounts, args.reconcile_reps, workdir, tally
                )
            flush.flushall()
    finally:
        flush.close()
    return results


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--latency-n", type=int, default=500, help="round trips measured (each side)")
    ap.add_argument("--warmup", type=int, default=50, help="round trips not measured")
    ap.add_argument(
        "--idle-workers",
        type=int,
        default=0,
        help="more workers registered (alive, idle) in the latency run, as in a fleet",
    )
    ap.add_argument("--workers", type=int, default=100, help="workers in the throughput run")
    ap.add_argument("--accounts-per-worker", type=int, default=1)
    ap.add_argument("--updates", type=int, default=2000, help="updates in the throughput run")
    ap.add_argument("--reconcile-accounts", type=int, default=10_000)
    ap.add_argument("--reconcile-reps", type=int, default=3)
    ap.add_argument("--celery-n", type=int, default=200, help="Celery broadcasts measured")
    ap.add_argument(
        "--no-celery-install",
        action="store_true",
        help="skip Celery unless it is installed already (else var/bench/celery-venv is made)",
    )
    parts = ("latency", "throughput", "reconcile", "celery")
    ap.add_argument("--only", nargs="+", choices=parts, default=list(parts))
    ap.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    ap.add_argument("--no-results", action="store_true", help="print only")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="every scenario at tiny sizes (a few seconds), checked for completion only;\n"
        "never writes results, never installs Celery (make bench-smoke, part of make test)",
    )
    ap.add_argument(
        "--hiredis",
        action="store_true",
        help="use redis-py's hiredis parser (installed into var/bench/hiredis, not the venv);\n"
        'results go to their own section, "… §7), with hiredis"',
    )
    args = ap.parse_args()
    if args.smoke:
        ap.set_defaults(**SMOKE_SIZES)
        args = ap.parse_args()
        args.no_results = args.no_celery_install = True
    return args


def main() -> None:
    args = parse_args()
    if args.hiredis and not hiredis_available():
        reexec_with_hiredis()

    tally = LogTally()
    logging.basicConfig(level=logging.WARNING, handlers=[tally], force=True)
    env = describe_machine()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hiscrm-bench-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as url:
            print(f"redis-server at {url}; {env}")
            results = anyio.run(run_all, args, url, workdir, tally, backend="asyncio")
            results["env"] = env
            if "celery" in args.only:
                print(f"4/4 celery: {args.celery_n} broadcasts with reply …")
                results["celery"] = bench_celery(
                    url, args.celery_n, args.warmup, workdir, not args.no_celery_install
                )
    t, notes, says = build_report(results)
    print()
    print(t.text())
    print()
    for n in notes:
        print(textwrap.fill(n, 100, initial_indent="- ", subsequent_indent="  "))
    print()
    print(textwrap.fill(" ".join(says), 100))
    if tally.counts:
        print("\nwarnings logged by hiscrm during the run:")
        for (name, msg), count in tally.counts.most_common():
            print(f"  {count:6d}  {name}: {msg}")
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if args.smoke:
        problems = smoke_problems(results, args)
        for problem in problems:
            print(f"smoke: {problem}", file=sys.stderr)
        if problems:
            raise SystemExit(1)
        print(
            "smoke: every scenario ran to completion (sizes too small for the numbers to mean much)"
        )
    if not args.no_results:
        command = " ".join([".venv/bin/python", "benchmarks/delivery.py", *sys.argv[1:]])
        title = SECTION + (", with hiredis" if args.hiredis else "")
        write_results(
            args.results, title=title, command=command, env=env, t=t, notes=notes, says=says
        )
        print(f"results written to {args.results}")


def smoke_problems(r: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What a --smoke run shows broken: a scenario that did not run to completion, or
    instrumentation that no longer sees what it wraps. Never a judgement on the numbers."""
    out: list[str] = []
    lat = r.get("latency")
    if "latency" in args.only:
        rounds = args.latency_n + args.warmup
        if not lat or lat["statuses"] != {"applied": rounds}:
            out.append(f"latency: outcomes {lat and lat['statuses']}, expected {rounds} applied")
        elif lat["ack_seen"]["n"] != args.latency_n or lat["pub_ack_seen"]["n"] != args.latency_n:
            out.append("latency: the wrapped Master.on_acks / Updates.notify saw no updates")
    tp = r.get("throughput")
    if "throughput" in args.only:
        if not tp or tp["applied"] != tp["total"]:
            out.append(f"throughput: outcomes {tp and tp['statuses']}, expected all applied")
        elif tp["drain"]["applied"] != tp["drain"]["acks"]:
            out.append(f"Master drain: {tp['drain']['applied']} of {tp['drain']['acks']} applied")
    rc = r.get("reconcile")
    if "reconcile" in args.only:
        if not rc or rc["run_applied"] != rc["accounts"]:
            out.append(
                f"reconcile: {rc and rc['run_applied']} of {args.reconcile_accounts} applied"
            )
        elif not {"ids_of_worker", "get_each"} <= set(rc["phases"]):
            out.append(f"reconcile: Worker.reconcile's reads not seen ({sorted(rc['phases'])})")
    ce = r.get("celery")
    if "celery" in args.only:
        if ce and "skipped" in ce:
            print(f"smoke: celery skipped ({ce['skipped']})")
        elif not ce or ce["missing"] or ce["rt"]["n"] != args.celery_n:
            out.append(f"celery: {ce and ce['missing']} broadcasts without a reply")
    return out


def hiredis_available() -> bool:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True


def reexec_with_hiredis() -> None:
    """Run this script again with hiredis importable, without touching the project venv."""
    target = ROOT / "var" / "bench" / "hiredis"
    if os.environ.get("HISCRM_BENCH_HIREDIS_PATH"):
        raise SystemExit(f"hiredis is still not importable from {target}")
    if not any(target.glob("hiredis*")):
        print("installing hiredis into var/bench/hiredis …", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "--target", str(target), "hiredis"], check=True, timeout=300)
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, HISCRM_BENCH_HIREDIS_PATH=str(target))
    os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]], env)


def describe_machine() -> str:
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    server = version[2].removeprefix("v=") if len(version) > 2 else "?"
    if hiredis_available():
        import hiredis

        parser = f", hiredis {hiredis.__version__}"
    else:
        parser = " (no hiredis)"
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, redis-server {server}, "
        f"redis-py {redis.__version__}{parser}"
    )


if __name__ == "__main__":
    main()
