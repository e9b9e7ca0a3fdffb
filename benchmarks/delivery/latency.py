"""1. latency — publish → applied → ACK seen by the Master, one worker, against the floor."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.connection import connect, is_cluster
from hiscrm_bus.settings import is_cluster_url
from hiscrm_bus.streams import Received
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_master.updates import Updates
from hiscrm_worker.service import Worker
from hiscrm_worker.settings import WorkerSettings

from .infra import (
    aclose_all,
    dist,
    now,
    prefix,
    raw_client,
    wait_until,
)
from .throughput import BareSubscriber

# ----------------------------------------------------------------------------- 1. latency


class FloorRoundTrip:
    """The bare redis-py round trip: HSET+PUBLISH, a subscriber doing HGETALL+XADD
    (:class:`BareSubscriber`, as in the throughput floors), XREAD.

    On a cluster (a ``redis+cluster://`` URL): redis-py's cluster client for the HSET,
    HGETALL, XADD and XREAD, SPUBLISH in the HSET's pipeline (a cluster pipeline sends
    each node its part), and the subscriber SSUBSCRIBEd on a plain connection to the
    primary that serves the channel's slot, as hiscrm's workers are. The three names
    hash to different slots, as an account's hash, a worker's channel and its stream
    may."""

    def __init__(self, url: str) -> None:
        p = prefix("floor-rt")
        self.subscriber = BareSubscriber(url, p, 0)
        self.hash = f"{self.subscriber.account_prefix}acc"
        self.channel, self.stream = self.subscriber.channel, self.subscriber.stream
        self.cluster = is_cluster_url(url)
        self.master = raw_client(url)
        self.last_id = "0-0"
        self.version = 0

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await self.subscriber.run(task_status=task_status)

    async def once(self) -> float:
        self.version += 1
        version = str(self.version).encode()
        notice = json.dumps(
            {"type": "config_update", "account_id": "acc", "config_version": self.version}
        )
        t0 = now()
        async with self.master.pipeline(transaction=False) as pipe:
            pipe.hset(self.hash, mapping={"name": f"n{self.version}", "config_version": version})
            if self.cluster:
                pipe.spublish(self.channel, notice)
            else:
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
        await self.master.aclose()
        await self.subscriber.aclose()


class TimedScript:
    """A registered script whose calls note when they are sent (its ninth argument is
    the update id); everything else (``sha``, …) is the script's own."""

    def __init__(self, script: Any, sent: dict[str, float]) -> None:
        self._script = script
        self._sent = sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._script, name)

    async def __call__(self, *, keys: list[Any], args: list[Any], **kw: Any) -> Any:
        self._sent.setdefault(str(args[8]), now())
        return await self._script(keys=keys, args=args, **kw)


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
    updates._change = TimedScript(updates._change, publishing)  # type: ignore[assignment]
    if is_cluster(credis):
        # on a cluster that call writes and records (and waits for a replica); the
        # caller SPUBLISHes after it: the round trip starts there
        publish_call = updates._publish

        async def timed_publish(sends: Sequence[Any], *a: Any, **kw: Any) -> Any:
            t = now()
            for message, _owner in sends:
                publishing.setdefault(message.update_id, t)
            return await publish_call(sends, *a, **kw)

        updates._publish = timed_publish  # type: ignore[method-assign,assignment]

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
                found = await updates.tracker.wait_outcomes(
                    [sent.update_id], after, 10, accounts=[account]
                )
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
