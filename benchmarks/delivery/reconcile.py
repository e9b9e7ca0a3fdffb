"""3. reconcile — a worker taking over many accounts on start, against the floor."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from hiscrm_bus.connection import connect
from hiscrm_master.updates import Updates
from hiscrm_worker.service import Worker
from hiscrm_worker.settings import WorkerSettings

from .infra import (
    LogTally,
    aclose_all,
    create_accounts,
    matching,
    now,
    prefix,
    time_calls,
    wait_until,
)


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
        await create_accounts(Updates(client, wsettings, "bench"), dict.fromkeys(ids, wid))
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
