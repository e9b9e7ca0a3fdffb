"""Where a cluster update's milliseconds go, one step at a time, without other work on
the event loop while the update travels.

    python -m benchmarks.cluster_probe [--n 200] [--single]

One worker and one Master in this process on a local 3+3 Redis Cluster (``--single``:
one redis-server), one account. Each round: ``Updates.change``; then, timed from its
return, the worker's ACK appearing in its stream (a bare XREAD) and the Master's ACK
handler seeing it; then, after both, one ``PendingTracker.wait_outcomes`` call for the
update (whose outcome is recorded by then). The delivery benchmark's latency run starts
``wait_outcomes`` while the update travels, on the same event loop; this separates the
two. Prints p50 / p90 of each; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import anyio

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.connection import connect
from hiscrm_bus.streams import Received
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_master.updates import Updates
from hiscrm_worker.service import Worker
from hiscrm_worker.settings import WorkerSettings

from .delivery.infra import aclose_all, now, raw_client, redis_cluster, redis_server, wait_until


async def probe(url: str, workdir: Path, n: int) -> dict[str, list[float]]:
    ms = MasterSettings(redis_url=url, key_prefix="probe:", master_id="probe-m")
    ws = WorkerSettings(
        redis_url=url,
        key_prefix="probe:",
        worker_id="probe-w",
        platforms=("synthetic",),
        data_dir=workdir / "w",
    )
    caller, wredis, mredis = await connect(ms), await connect(ws), await connect(ms)
    raw = raw_client(url)
    updates = Updates(caller, ms, "bench")
    worker, master = Worker(ws, wredis), Master(ms, mredis)
    seen: dict[str, float] = {}
    handler = master.on_acks

    async def on_acks(received: list[Received]) -> None:
        t = now()
        for r in received:
            update_id = getattr(r.message, "update_id", "")
            if update_id:
                seen.setdefault(update_id, t)
        await handler(received)

    master.on_acks = on_acks  # type: ignore[method-assign]
    stream = ms.keys.worker_stream("probe-w", "acks")
    out: dict[str, list[float]] = {"change": [], "in_stream": [], "master": [], "wait": []}
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await tg.start(master.run)
            await updates.create(AccountConfig(id="a1", platform="synthetic", worker_id="probe-w"))
            await wait_until(lambda: worker.runner.get("a1") is not None, 10, "the task")
            await anyio.sleep(0.5)
            last: Any = (await raw.xrevrange(stream, count=1) or [("0-0", {})])[0][0]
            for i in range(n):
                after = await updates.tracker.last_outcome_id()
                t0 = now()
                _write, sent = await updates.change("a1", {"name": f"n{i}"}, "admin_update")
                t1 = now()
                assert sent is not None
                found = False
                while not found:
                    reply: Any = await raw.xread({stream: last}, count=10, block=2000)
                    if not reply:
                        raise RuntimeError("no ACK within 2 s")
                    for _s, entries in reply:
                        for entry_id, fields in entries:
                            last = entry_id
                            found |= sent.update_id.encode() in b"".join(fields.values())
                t2 = now()
                update_id = sent.update_id
                await wait_until(lambda: update_id in seen, 5, "the Master")  # noqa: B023 - awaited here
                t3 = now()
                await updates.tracker.wait_outcomes(
                    [sent.update_id], after, 10, accounts=[sent.account_id]
                )
                out["change"].append(t1 - t0)
                out["in_stream"].append(t2 - t1)
                out["master"].append(seen[update_id] - t1)
                out["wait"].append(now() - t3)
            tg.cancel_scope.cancel()
    finally:
        await aclose_all(caller, wredis, mredis, raw)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="rounds")
    ap.add_argument("--single", action="store_true", help="one redis-server, not a cluster")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hiscrm-probe-") as tmp:
        workdir = Path(tmp)
        with (redis_server if args.single else redis_cluster)(workdir) as url:
            out = anyio.run(probe, url, workdir, args.n, backend="asyncio")
    labels = {
        "change": "Updates.change() call",
        "in_stream": "change() returned -> the worker's ACK in its stream",
        "master": "change() returned -> the Master's ACK handler sees it",
        "wait": "wait_outcomes() for an outcome already recorded",
    }
    for key, label in labels.items():
        values = sorted(out[key])
        p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
        print(f"{label}: p50 {statistics.median(values) * 1000:.2f} ms, p90 {p90 * 1000:.2f} ms")


if __name__ == "__main__":
    main()
