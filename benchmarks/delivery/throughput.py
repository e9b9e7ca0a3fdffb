"""2. throughput — updates across many workers, applied outcomes per second, against the floor."""

from __future__ import annotations

import json
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
    OutcomeCount,
    aclose_all,
    create_accounts,
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


async def floor_throughput(url: str, workers: int, total: int, batch: int) -> dict[str, Any]:  # noqa: PLR0915 - one measurement, read top to bottom
    """The bare redis-py fleet: ``workers`` subscribers each doing HGETALL+XADD per
    notice, one reader XREADing the stream, the producer pipelining HSET, HINCRBY and
    PUBLISH. On a cluster: redis-py's cluster client everywhere but the subscriptions,
    which SSUBSCRIBE on a plain connection to the primary serving their channel's slot;
    the producer's cluster pipeline SPUBLISHes (each node gets its part); the one
    stream lives on one primary."""
    p = prefix("floor-tp")
    stream = f"{p}acks"
    cluster = is_cluster_url(url)
    producer = raw_client(url)
    reader = raw_client(url)
    if cluster:
        subs = [await node_client_for(producer, f"{p}control:{k}") for k in range(workers)]
    else:
        subs = [Redis.from_url(url) for _ in range(workers)]
    clients = [raw_client(url) for _ in range(workers)]
    ready = 0
    kind = "smessage" if cluster else "message"

    async def subscriber(k: int) -> None:
        nonlocal ready
        pubsub = subs[k].pubsub()
        client = clients[k]
        try:
            if cluster:
                await pubsub.ssubscribe(f"{p}control:{k}")
            else:
                await pubsub.subscribe(f"{p}control:{k}")
            while (await pubsub.get_message(timeout=1)) is None:
                pass
            ready += 1
            while True:
                msg = await pubsub.get_message(timeout=None)
                if msg is None or msg["type"] != kind:
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
                cpu0 = await redis_cpu_s(producer)
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
            tg.cancel_scope.cancel()
    finally:
        await aclose_all(producer, reader, *subs, *clients)
    return {
        "total": total,
        "completed": got,
        "seconds": done_at - t0,
        "per_s": got / (done_at - t0),
        "send_s": t_sent - t0,
        "redis_cpu_s": cpu,
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
