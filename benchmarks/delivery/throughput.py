"""2. throughput — updates across many workers, applied outcomes per second, against the floor."""

from __future__ import annotations

import json
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from redis.asyncio import Redis

from hiscrm_bus.accounts import decode_hash
from hiscrm_bus.connection import connect
from hiscrm_bus.messages import AccountConfigUpdateAck
from hiscrm_bus.settings import is_cluster_url
from hiscrm_bus.streams import append_many
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_master.updates import Updates

from .infra import (
    Hosts,
    OutcomeCount,
    aclose_all,
    create_accounts,
    host_processes,
    node_client_for,
    now,
    prefix,
    raw_client,
    redis_cpu_s,
    send_rounds,
    start_up_acks,
    synthetic_workers,
    wait_until,
)

# ----------------------------------------------------------------------------- 2. throughput


@dataclass(frozen=True)
class HostGroups:
    """Subscribers spread over host processes: each group's subscriber numbers."""

    groups: list[list[int]]


class BareSubscriber:
    """One worker of the bare redis-py fleet: SUBSCRIBEs to its channel (SSUBSCRIBE on
    a plain connection to the primary serving the channel's slot, on a cluster) and
    does HGETALL+XADD per notice. The floors run 100 of these, in the benchmark's
    process or spread over host processes (``benchmarks.delivery.floor_host``)."""

    def __init__(self, url: str, key_prefix: str, k: int) -> None:
        self.channel = f"{key_prefix}control:{k}"
        self.account_prefix = f"{key_prefix}account:"
        self.stream = f"{key_prefix}acks"
        self.cluster = is_cluster_url(url)
        self.client = raw_client(url)
        self.sub: Redis = self.client if self.cluster else Redis.from_url(url)

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        kind = "message"
        if self.cluster:
            self.sub = await node_client_for(self.client, self.channel)
            kind = "smessage"
        pubsub = self.sub.pubsub()
        try:
            if self.cluster:
                await pubsub.ssubscribe(self.channel)
            else:
                await pubsub.subscribe(self.channel)
            while (await pubsub.get_message(timeout=1)) is None:
                pass  # the subscribe confirmation
            task_status.started()
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is None or msg["type"] != kind:
                    continue
                notice = json.loads(msg["data"])
                config = await self.client.hgetall(self.account_prefix + notice["account_id"])
                # on a cluster the notice may overtake the write to another node: the
                # producer counts entries, the latency floor waits for its version
                version = config.get(b"config_version", b"")
                await self.client.xadd(
                    self.stream,
                    {"account_id": notice["account_id"], "version": version},
                    maxlen=100_000,
                    approximate=True,
                )
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        await aclose_all(*dict.fromkeys((self.client, self.sub)))


async def floor_throughput(  # noqa: PLR0915 - one measurement, read top to bottom
    url: str, workers: int, total: int, batch: int, hosts: HostGroups | None = None
) -> dict[str, Any]:
    """The bare redis-py fleet: ``workers`` :class:`BareSubscriber`s, one reader
    XREADing the stream, the producer pipelining HSET, HINCRBY and PUBLISH. The
    subscribers run here, or with ``hosts`` in host processes as hiscrm's workers do
    in the processes run (``hosts.groups`` splits ``range(workers)``). On a cluster:
    redis-py's cluster client everywhere but the subscriptions; the producer's cluster
    pipeline SPUBLISHes (each node gets its part); the one stream lives on one primary."""
    p = prefix("floor-tp")
    stream = f"{p}acks"
    cluster = is_cluster_url(url)
    producer = raw_client(url)
    reader = raw_client(url)
    subscribers = [] if hosts else [BareSubscriber(url, p, k) for k in range(workers)]
    spread: Hosts | None = None

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
        async with anyio.create_task_group() as tg, AsyncExitStack() as stack:
            for subscriber in subscribers:
                await tg.start(subscriber.run)
            if hosts:
                groups = [[url, p, *map(str, ks)] for ks in hosts.groups]
                spread = await stack.enter_async_context(
                    host_processes("benchmarks.delivery.floor_host", groups)
                )
            async with anyio.create_task_group() as run:
                await run.start(consume)
                cpu0 = await redis_cpu_s(producer)
                hosts0 = spread.cpu_s() if spread else 0.0
                here0 = time.process_time()
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
                            payload = json.dumps({"account_id": acc})
                            if cluster:
                                pipe.spublish(f"{p}control:{w}", payload)
                            else:
                                pipe.publish(f"{p}control:{w}", payload)
                            sent += 1
                        await pipe.execute()
                t_sent = now()
                with anyio.fail_after(max(60, total / 50)):
                    await done.wait()
                cpu = await redis_cpu_s(producer) - cpu0
                hosts_cpu = spread.cpu_s() - hosts0 if spread else 0.0
                here_cpu = time.process_time() - here0
            tg.cancel_scope.cancel()
    finally:
        await aclose_all(producer, reader)
        for subscriber in subscribers:
            await subscriber.aclose()
    return {
        "total": total,
        "completed": got,
        "seconds": done_at - t0,
        "per_s": got / (done_at - t0),
        "send_s": t_sent - t0,
        "redis_cpu_s": cpu,
        **({"processes": len(hosts.groups), "hosts_cpu_s": hosts_cpu} if hosts else {}),
        "here_cpu_s": here_cpu,
    }


async def bench_throughput(
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
    await create_accounts(updates, owner)
    master = Master(msettings, mredis)
    fleet, wclients = await synthetic_workers(url, p, workdir / "tp", worker_ids)

    counted = OutcomeCount(total)
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
                lambda: master.acks.processed >= start_up_acks(owner),
                60,
                "the Master to hear the fleet",
            )
            master_caught_up_s = now() - t_start
            raws = await updates.store.get_raw(accounts)
            current = {a: decode_hash(r) for a, r in zip(accounts, raws, strict=True)}
            after = await updates.tracker.last_outcome_id()
            stats_before = await updates.tracker.stats()
            acks_before = master.acks.processed

            async with anyio.create_task_group() as run:
                await run.start(counted.run, updates.tracker, after)
                t0 = now()
                await send_rounds(updates, current, accounts, total)
                t_sent = now()
                with anyio.move_on_after(max(60, total / 20)):
                    await counted.done.wait()
                run.cancel_scope.cancel()
            stats_after = await updates.tracker.stats()
            acks = master.acks.processed - acks_before
            tg.cancel_scope.cancel()
    finally:
        await aclose_all(admin, mredis, *wclients)
    end = counted.done_at or now()
    completed = sum(counted.statuses.values())
    return {
        "workers": workers,
        "accounts": len(accounts),
        "total": total,
        "completed": completed,
        "applied": counted.statuses.get("applied", 0),
        "statuses": dict(counted.statuses),
        "seconds": end - t0,
        "per_s": counted.statuses.get("applied", 0) / (end - t0),
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
        await create_accounts(updates, dict.fromkeys(ids, ghost))
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
