"""What one account, one worker and one Master hold in Redis: memory, connections, and
the redis-server CPU an idle fleet costs.

    python -m benchmarks.capacity [--accounts 2000] [--workers 20] [--cluster]

On a private redis-server (or, with ``--cluster``, a local 3-primary + 3-replica Redis
Cluster) the run creates ``--accounts`` accounts as ``hiscrm account add`` does
(``Updates.create``), then starts ``--workers`` workers in this process, each with its
own client, owning an equal share (the synthetic platform: each account's task waits
for a login, so nothing is crawled), then one Master; it reads INFO memory and INFO
clients (summed over the primaries on a cluster) before and after each step, and
``MEMORY USAGE`` of one account's hash, then INFO cpu (every node on a cluster) over
``--idle-s`` seconds of the idle fleet. Prints what it measured (docs/scaling.md uses
these); writes nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, cast

import anyio
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from hiscrm_bus.connection import connect, is_cluster
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_master.updates import Updates

from .delivery.infra import (
    aclose_all,
    create_accounts,
    redis_cluster,
    redis_cpu_s,
    redis_server,
    synthetic_workers,
    wait_until,
)


async def totals(redis: Redis) -> dict[str, int]:
    """used_memory and connected_clients, summed over the primaries of a cluster."""
    nodes: list[Any] = [None]
    if is_cluster(redis):
        nodes = list(cast(RedisCluster, redis).get_primaries())
    out = {"used_memory": 0, "connected_clients": 0}
    for node in nodes:
        kw: dict[str, Any] = {"target_nodes": node} if node is not None else {}
        mem = await redis.info("memory", **kw)
        cli = await redis.info("clients", **kw)
        out["used_memory"] += int(mem["used_memory"])
        out["connected_clients"] += int(cli["connected_clients"])
    return out


async def settle(redis: Redis, seconds: float) -> dict[str, int]:
    await anyio.sleep(seconds)
    return await totals(redis)


async def measure(
    url: str, accounts: int, workers: int, workdir: Path, idle_s: float
) -> dict[str, Any]:
    p = "cap:"
    msettings = MasterSettings(redis_url=url, key_prefix=p, master_id="cap-master")
    admin = await connect(msettings)
    updates = Updates(admin, msettings, "bench")
    worker_ids = [f"cap-w{k}" for k in range(workers)]
    owner = {f"cap-a{i:06d}": worker_ids[i % workers] for i in range(accounts)}
    clients: list[Redis] = [admin]
    r: dict[str, Any] = {"accounts": accounts, "workers": workers}
    try:
        r["empty"] = await settle(admin, 0.2)
        await create_accounts(updates, owner, as_cli=True)  # as `hiscrm account add`
        r["accounts_created"] = await settle(admin, 0.5)
        one = next(iter(owner))
        r["account_hash_bytes"] = int(await admin.memory_usage(msettings.keys.account(one)) or 0)
        fleet, worker_clients = await synthetic_workers(url, p, workdir, worker_ids)
        clients += worker_clients
        async with anyio.create_task_group() as tg:
            for w in fleet:
                await tg.start(w.run)
            await wait_until(
                lambda: all(len(list(w.runner.ids())) >= accounts // workers for w in fleet),
                60,
                "every worker's tasks",
            )
            r["workers_running"] = await settle(admin, 3.0)
            mredis = await connect(msettings)
            clients.append(mredis)
            master = Master(msettings, mredis)
            await tg.start(master.run)
            r["master_running"] = await settle(admin, 3.0)
            # the fleet idle: heartbeats, pings, blocked reads, periodic reconciles
            cpu0, t0 = await redis_cpu_s(admin), anyio.current_time()
            await anyio.sleep(idle_s)
            r["idle_redis_cpu_per_s"] = (await redis_cpu_s(admin) - cpu0) / (
                anyio.current_time() - t0
            )
            r["idle_s"] = idle_s
            tg.cancel_scope.cancel()
    finally:
        await aclose_all(*clients)
    return r


def report(r: dict[str, Any]) -> None:
    a, w = r["accounts"], r["workers"]
    e, c, wr, mr = r["empty"], r["accounts_created"], r["workers_running"], r["master_running"]
    mem = "used_memory"
    con = "connected_clients"
    print(f"accounts: {a:,}; workers: {w}")
    print(f"MEMORY USAGE of one account hash: {r['account_hash_bytes']} B")
    print(
        f"used_memory per account, created (hash, indexes): {(c[mem] - e[mem]) / a:.0f} B; "
        f"with {w} workers running them (worker hashes, streams, task reports): "
        f"{(wr[mem] - e[mem]) / a:.0f} B"
    )
    print(
        f"used_memory per worker (everything the workers added, ÷ {w}): "
        f"{(wr[mem] - c[mem]) / w:.0f} B"
    )
    print(f"connections per worker: {(wr[con] - c[con]) / w:.1f}")
    print(f"connections of one Master: {mr[con] - wr[con]}")
    print(
        f"redis-server CPU with the fleet idle (workers and Master running, no updates, "
        f"{r['idle_s']:.0f} s; every node on a cluster): {r['idle_redis_cpu_per_s'] * 1000:.1f} "
        f"ms/s, {r['idle_redis_cpu_per_s'] / w * 1e6:.0f} µs/s per worker"
    )
    print(f"raw: {r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--accounts", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--idle-s", type=float, default=10.0, help="seconds the idle fleet is measured")
    ap.add_argument("--cluster", action="store_true", help="a local 3+3 Redis Cluster")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hiscrm-capacity-") as tmp:
        workdir = Path(tmp)
        os.environ.setdefault("HISCRM_DATABASE_URL", f"sqlite+aiosqlite:///{workdir}/cap.db")
        with (redis_cluster if args.cluster else redis_server)(workdir) as url:
            r = anyio.run(
                measure, url, args.accounts, args.workers, workdir, args.idle_s, backend="asyncio"
            )
    report(r)


if __name__ == "__main__":
    main()
