"""5. and 6. — the workers in separate processes (``benchmarks.delivery.host``), the
Master and the caller in this one:

5. throughput — updates across many workers spread over several processes, applied
   outcomes per second (default 100 workers in 4 processes);
6. fleet change — one change to every account (default 1,000) owned by workers in 10
   processes, timed as ``hiscrm account set --all --wait`` reports it: "last ACK after",
   the largest recorded ``latency_ms`` (Redis clock, from the pending record to the ACK).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from hiscrm_bus.accounts import decode_hash
from hiscrm_bus.connection import connect, is_cluster
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_master.updates import Updates

from .infra import (
    Hosts,
    OutcomeCount,
    aclose_all,
    create_accounts,
    host_processes,
    now,
    prefix,
    redis_cpu_nodes,
    redis_cpu_s,
    send_rounds,
    start_up_acks,
    wait_until,
)

T = TypeVar("T")


def worker_hosts(
    url: str, key_prefix: str, workdir: Path, groups: Sequence[Sequence[str]]
) -> AbstractAsyncContextManager[Hosts]:
    """One ``benchmarks.delivery.host`` process per group of worker ids."""
    argvs = [[url, key_prefix, str(workdir / f"host{k}"), *ids] for k, ids in enumerate(groups)]
    return host_processes("benchmarks.delivery.host", argvs)


def split(ids: Sequence[T], parts: int) -> list[list[T]]:
    """``ids`` dealt round-robin into at most ``parts`` non-empty groups."""
    return [list(ids[k::parts]) for k in range(parts) if ids[k::parts]]


async def bench_processes(
    url: str, processes: int, workers: int, total: int, workdir: Path
) -> dict[str, Any]:
    """Applied updates/s with ``workers`` workers (one account each) in ``processes``
    host processes, sending ``total`` updates with ``Updates.change_many``."""
    p = prefix("procs")
    msettings = MasterSettings(redis_url=url, key_prefix=p, master_id="bench-master")
    admin = await connect(msettings)
    mredis = await connect(msettings)
    updates = Updates(admin, msettings, "bench")
    worker_ids = [f"pt-w{k}" for k in range(workers)]
    owner = {f"pt-a{k}": wid for k, wid in enumerate(worker_ids)}
    accounts = list(owner)
    counted = OutcomeCount(total)
    node_cpu: dict[str, float] = {}  # a cluster's nodes, each
    try:
        await create_accounts(updates, owner)
        master = Master(msettings, mredis)
        async with anyio.create_task_group() as tg:
            await tg.start(master.run)
            groups = split(worker_ids, processes)
            async with worker_hosts(url, p, workdir / "procs", groups) as hosts:
                await wait_until(
                    lambda: master.acks.processed >= start_up_acks(owner),
                    60,
                    "the Master to hear them",
                )
                raws = await updates.store.get_raw(accounts)
                current = {a: decode_hash(r) for a, r in zip(accounts, raws, strict=True)}
                after = await updates.tracker.last_outcome_id()
                stats_before = await updates.tracker.stats()

                async with anyio.create_task_group() as run:
                    await run.start(counted.run, updates.tracker, after)
                    nodes0 = await redis_cpu_nodes(admin) if is_cluster(admin) else {}
                    cpu0 = await redis_cpu_s(admin)
                    hosts0, here0 = hosts.cpu_s(), time.process_time()
                    t0 = now()
                    await send_rounds(updates, current, accounts, total)
                    t_sent = now()
                    with anyio.move_on_after(max(60, total / 20)):
                        await counted.done.wait()
                    cpu = await redis_cpu_s(admin) - cpu0
                    if nodes0:
                        nodes1 = await redis_cpu_nodes(admin)
                        node_cpu = {n: nodes1[n] - c for n, c in nodes0.items() if n in nodes1}
                    hosts_cpu, here_cpu = hosts.cpu_s() - hosts0, time.process_time() - here0
                    run.cancel_scope.cancel()
                stats_after = await updates.tracker.stats()
            tg.cancel_scope.cancel()
    finally:
        await aclose_all(admin, mredis)
    end = counted.done_at or now()
    return {
        "processes": len(groups),
        "workers": workers,
        "total": total,
        "completed": sum(counted.statuses.values()),
        "applied": counted.statuses.get("applied", 0),
        "statuses": dict(counted.statuses),
        "seconds": end - t0,
        "per_s": counted.statuses.get("applied", 0) / (end - t0),
        "send_s": t_sent - t0,
        "redis_cpu_s": cpu,
        "hosts_cpu_s": hosts_cpu,
        "here_cpu_s": here_cpu,
        "retried": stats_after.get("retried", 0) - stats_before.get("retried", 0),
        "start_s": hosts.start_s,
        **({"redis_cpu_nodes": node_cpu} if node_cpu else {}),
    }


async def bench_fleet(
    url: str, processes: int, accounts: int, reps: int, workdir: Path
) -> dict[str, Any]:
    """``account set --all --wait`` over ``accounts`` accounts owned by one worker in each
    of ``processes`` host processes: what the CLI does (read every hash, change_many,
    wait for the outcomes), timed as it reports it."""
    p = prefix("fleet")
    msettings = MasterSettings(redis_url=url, key_prefix=p, master_id="bench-master")
    admin = await connect(msettings)
    mredis = await connect(msettings)
    updates = Updates(admin, msettings, "bench")
    worker_ids = [f"fc-w{k}" for k in range(processes)]
    owner = {f"fc-a{i:05d}": worker_ids[i % processes] for i in range(accounts)}
    runs: list[dict[str, Any]] = []
    try:
        await create_accounts(updates, owner)
        master = Master(msettings, mredis)
        async with anyio.create_task_group() as tg:
            await tg.start(master.run)
            groups = [[w] for w in worker_ids]
            async with worker_hosts(url, p, workdir / "fleet", groups) as hosts:
                await wait_until(
                    lambda: master.acks.processed >= start_up_acks(owner),
                    60,
                    "the Master to hear them",
                )
                for rnd in range(reps):
                    # as `hiscrm account set --all name=… --wait`
                    t0 = now()
                    ids = await updates.store.ids()
                    raws = await updates.store.get_raw(ids)
                    batch = {
                        a: (decode_hash(r), {"name": f"f{rnd}"})
                        for a, r in zip(ids, raws, strict=True)
                        if r
                    }
                    after = await updates.tracker.last_outcome_id()
                    t_write = now()
                    _results, sent = await updates.change_many(batch, "admin_update")
                    tracked = [m.update_id for m in sent if m is not None]
                    outcomes = await updates.tracker.wait_outcomes(tracked, after, 60)
                    t_done = now()
                    runs.append(
                        {
                            "last_ack_ms": max(
                                (o.latency_ms for o in outcomes.values()), default=0
                            ),
                            "outcomes": len(outcomes),
                            "tracked": len(tracked),
                            "applied": sum(o.status == "applied" for o in outcomes.values()),
                            "wall_ms": (t_done - t0) * 1000,
                            "from_write_ms": (t_done - t_write) * 1000,
                        }
                    )
            tg.cancel_scope.cancel()
    finally:
        await aclose_all(admin, mredis)
    best = min(runs, key=lambda r: r["last_ack_ms"])
    return {
        "processes": processes,
        "accounts": accounts,
        "reps": reps,
        "runs": runs,
        "last_ack_ms": best["last_ack_ms"],
        "start_s": hosts.start_s,
        "complete": all(r["applied"] == r["tracked"] == accounts for r in runs),
    }
