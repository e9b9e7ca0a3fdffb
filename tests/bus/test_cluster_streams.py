"""What the Master reads from the workers, on a Redis Cluster (issue 13): the streams
of many worker groups, spread over every primary, read per slot by one StreamReader
(nothing left pending, a dead consumer's entries claimed, a failover waited out); the
worker registry; dead letters; the trimming and the backlog diagnose reads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.crc import key_slot

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.connection import make_client
from hiscrm_bus.deadletter import DeadLetters
from hiscrm_bus.keys import Keys
from hiscrm_bus.messages import AccountConfigUpdateAck, DecodeError, TaskStatus
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import (
    Received,
    StreamFollower,
    StreamReader,
    append,
    append_many,
    append_many_to,
    by_slot,
    trim_consumed,
)
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_master.snapshot import ingest_backlog
from tests.conftest import fast_settings
from tests.redis_cluster import RedisCluster, running_cluster

pytestmark = [pytest.mark.real, pytest.mark.xdist_group("cluster_streams")]
GROUP = "masters"
# enough workers that their groups land on every primary
WORKERS = [f"w{i}" for i in range(24)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster for the module; each test works under a prefix of its own."""
    with running_cluster(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


def cluster_client(cluster: RedisCluster | list[tuple[str, int]]) -> Redis:
    """An asyncio cluster client, typed as Redis as ``make_client`` types it."""
    nodes = cluster if isinstance(cluster, list) else cluster.startup_nodes
    client = AsyncCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        socket_timeout=5,
        socket_connect_timeout=1,
    )
    return cast(Redis, client)


@pytest.fixture
async def bus(cluster: RedisCluster) -> AsyncIterator[tuple[Redis, BusSettings, Keys]]:
    settings = fast_settings(cluster.url)
    client = cluster_client(cluster)
    yield client, settings, Keys(settings.key_prefix, cluster=True)
    await client.aclose()


Bus = tuple[Redis, BusSettings, Keys]


def status(worker: str, n: int) -> TaskStatus:
    return TaskStatus(
        sender=worker, account_id=f"a-{worker}", worker_id=worker, state="running", config_version=n
    )


def primaries_of(cluster: RedisCluster, streams: list[str]) -> set[int]:
    """The ports of the primaries that hold ``streams``."""
    owners = set()
    for stream in streams:
        slot = key_slot(stream.encode())
        for node in cluster.nodes:
            if node.role == "primary" and any(a <= slot <= b for a, b in node.slots):
                owners.add(node.port)
    return owners


def fleet_reader(redis: Redis, settings: BusSettings, keys: Keys, **kwargs: Any) -> StreamReader:
    async def discover() -> dict[str, str]:
        return {keys.worker_stream(w, "events"): w for w in WORKERS}

    kwargs.setdefault("block_ms", 200)
    return StreamReader(redis, settings, None, GROUP, "m1", discover=discover, **kwargs)


async def take(receive: MemoryObjectReceiveStream[Received], n: int) -> list[Received]:
    with anyio.fail_after(10):
        return [await receive.receive() for _ in range(n)]


async def pending(redis: Redis, streams: list[str]) -> int:
    total = 0
    for stream in streams:
        total += int((await redis.xpending(stream, GROUP))["pending"])
    return total


MARK = status("mark", 999)


async def acknowledged(redis: Redis, keys: Keys, marked: anyio.Event) -> None:
    """Return once what the reader handled before now is acknowledged: a mark appended
    now reaches the handler after that (the lanes take turns, each acknowledging its
    batch before the next lane's batch is handled)."""
    await append(redis, keys.worker_stream(WORKERS[0], "events"), MARK, 1000)
    await marked.wait()


async def test_one_reader_gets_every_worker_groups_messages_and_acknowledges_them(
    cluster: RedisCluster, bus: Bus
) -> None:
    redis, settings, keys = bus
    streams = [keys.worker_stream(w, "events") for w in WORKERS]
    assert len(by_slot(streams)) == 16  # one lane per worker group
    assert len(primaries_of(cluster, streams)) == 3
    reader = fleet_reader(redis, settings, keys)
    send, receive = anyio.create_memory_object_stream[Received](1000)
    async with send, receive, anyio.create_task_group() as tg:

        async def handler(batch: list[Received]) -> None:
            for r in batch:
                await send.send(r)

        await tg.start(reader.run_received, handler)
        sent = {(w, n): status(w, n) for w in WORKERS for n in range(3)}
        for (w, _n), message in sent.items():
            await append(redis, keys.worker_stream(w, "events"), message, 1000)
        got = await take(receive, len(sent))
        # each from the stream of its writer, once
        assert sorted((r.source, r.message.config_version) for r in got) == sorted(sent)  # type: ignore[union-attr]
        assert all(r.message == sent[(r.source, r.message.config_version)] for r in got)  # type: ignore[union-attr]
        # once the handler returned, the entries are acknowledged; a later message shows
        # the reader went past every batch
        await append(redis, keys.worker_stream(WORKERS[0], "events"), status(WORKERS[0], 99), 1000)
        await take(receive, 1)
        assert await pending(redis, streams) <= 1
        tg.cancel_scope.cancel()


async def test_a_dead_consumers_idle_entries_are_claimed_on_every_node(
    cluster: RedisCluster, bus: Bus
) -> None:
    redis, settings, keys = bus
    settings = settings.model_copy(update={"claim_idle_s": 0.2})
    streams = [keys.worker_stream(w, "events") for w in WORKERS]
    for stream in streams:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await append(redis, stream, status("x", 1), 1000)
    # a Master that read them all, then died before acknowledging
    for lane in by_slot(streams).values():
        await redis.xreadgroup(GROUP, "dead", dict.fromkeys(lane, ">"), count=100)
    assert await pending(redis, streams) == len(streams)

    reader = fleet_reader(redis, settings, keys)
    seen: list[str] = []
    done, marked = anyio.Event(), anyio.Event()

    async def handler(batch: list[Received]) -> None:
        seen.extend(r.stream for r in batch if r.message != MARK)
        if len(seen) >= len(streams):
            done.set()
        if any(r.message == MARK for r in batch):
            marked.set()

    async with anyio.create_task_group() as tg:
        await tg.start(reader.run_received, handler)
        with anyio.fail_after(10):
            await done.wait()
            await acknowledged(redis, keys, marked)
        tg.cancel_scope.cancel()
    assert sorted(seen) == sorted(streams)
    assert await pending(redis, streams) <= 1  # the mark's, at most


async def test_a_restarted_reader_reads_its_own_pending_entries_first(bus: Bus) -> None:
    redis, settings, keys = bus
    settings = settings.model_copy(update={"claim_idle_s": 60})  # no claiming: its own
    streams = [keys.worker_stream(w, "events") for w in WORKERS]
    for stream in streams:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for n in range(2):
            await append(redis, stream, status("x", n), 1000)
    # a previous life of consumer m1 read them and died before acknowledging
    for lane in by_slot(streams).values():
        await redis.xreadgroup(GROUP, "m1", dict.fromkeys(lane, ">"), count=100)
    seen: list[str] = []
    done, marked = anyio.Event(), anyio.Event()

    async def handler(batch: list[Received]) -> None:
        seen.extend(r.stream for r in batch if r.message != MARK)
        if len(seen) >= 2 * len(streams):
            done.set()
        if any(r.message == MARK for r in batch):
            marked.set()

    reader = fleet_reader(redis, settings, keys)
    async with anyio.create_task_group() as tg:
        await tg.start(reader.run_received, handler)
        with anyio.fail_after(10):
            await done.wait()
            await acknowledged(redis, keys, marked)
        tg.cancel_scope.cancel()
    assert sorted(seen) == sorted(streams * 2)
    assert await pending(redis, streams) <= 1  # the mark's, at most


async def test_a_restarted_master_that_drains_a_full_page_of_acks_still_retries(
    cluster: RedisCluster,
) -> None:
    """A Master restarted with exactly one page (``count``) of its ACK entries unacked
    drains them, then reads on per slot: its sweep must still retry and fail an update
    nobody ACKs (a drain's "whole page read" must not pass for a backlog for ever)."""
    settings = fast_settings(cluster.cluster_url)
    redis = make_client(settings)
    master = Master(
        MasterSettings.model_validate({**settings.model_dump(), "master_id": "m1"}), redis
    )
    try:
        await WorkerRegistry(redis, settings.keys).heartbeat(WorkerInfo(id="w1"), ttl_s=60)
        await master.store.create(AccountConfig(id="acc-1", platform="synthetic", worker_id="w1"))
        stream = settings.keys.worker_stream("w1", "acks")
        group = master.settings.consumer_group
        count = master.acks.count
        ack = AccountConfigUpdateAck(
            sender="w1",
            account_id="acc-1",
            worker_id="w1",
            applied_version=1,
            seen_version=1,
            ok=True,
        )
        await append_many(redis, stream, [ack] * count, 1000)
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
        # the previous life of m1 read them and stopped before acknowledging
        await redis.xreadgroup(group, master.id, {stream: ">"}, count=count)
        seen = 0
        drained = anyio.Event()

        async def handler(batch: list[Received]) -> None:
            nonlocal seen
            await master.on_acks(batch)
            seen += len(batch)
            if seen > count:
                drained.set()

        async with anyio.create_task_group() as tg:
            await tg.start(master.acks.run_received, handler)
            # read by the slot's lane, once the drain is over
            await append(redis, stream, ack, 1000)
            with anyio.fail_after(10):
                await drained.wait()
            _result, sent = await master.updates.change("acc-1", {"name": "x"}, "admin_update")
            assert sent is not None
            with anyio.fail_after(20):
                # deadlines are on Redis' clock: each pass acts on those that passed
                while not (await master.store.get("acc-1")).config_stale:
                    await master.sweep()
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        stats = await master.tracker.stats()
        assert (stats["retried"], stats["failed"]) == (settings.max_attempts - 1, 1)
        assert not master.acks.backlogged
    finally:
        await redis.aclose()


async def test_trim_spans_every_node(bus: Bus) -> None:
    redis, _settings, keys = bus
    streams = [keys.worker_stream(w, "ingest") for w in WORKERS]
    for stream in streams:
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for n in range(3):
            await append(redis, stream, status("x", n), 1000)
    for lane in by_slot(streams).values():
        await redis.xreadgroup(GROUP, "m1", dict.fromkeys(lane, ">"), count=2)
    for stream in streams:  # the first two read, the first acknowledged
        first = (await redis.xrange(stream, count=1))[0][0]
        await redis.xack(stream, GROUP, first)

    await trim_consumed(redis, streams, GROUP)
    assert [await redis.xlen(s) for s in streams] == [2] * len(streams)


async def test_the_registry_lists_workers_of_every_group(bus: Bus) -> None:
    redis, _settings, keys = bus
    registry = WorkerRegistry(redis, keys)
    for w in WORKERS:
        assert await registry.claim(WorkerInfo(id=w, instance=f"i-{w}"), ttl_s=60) is None
        await registry.heartbeat(WorkerInfo(id=w, instance=f"i-{w}", capacity=7), ttl_s=60)
    # a claim by another process names the holder
    holder = await registry.claim(WorkerInfo(id=WORKERS[0], instance="other"), ttl_s=60)
    assert holder is not None and holder.instance == f"i-{WORKERS[0]}"
    await redis.delete(keys.worker(WORKERS[1]))  # its heartbeat expired
    alive, dead = await registry.all()
    assert sorted(w.id for w in alive) == sorted(WORKERS[:1] + WORKERS[2:])
    assert all(w.capacity == 7 and w.heartbeat_at is not None for w in alive)
    assert [w for w, _at in dead] == [WORKERS[1]]
    assert sorted(await registry.ids()) == sorted(WORKERS)
    assert await redis.pttl(keys.worker(WORKERS[0])) > 0
    await registry.forget(WORKERS[1])
    assert WORKERS[1] not in await registry.ids()


async def test_dead_letters_and_a_follower_across_slots(bus: Bus) -> None:
    redis, settings, keys = bus
    letters = DeadLetters(redis, settings)
    await letters.write("somewhere", DecodeError("bad", b"x"))
    assert await letters.counts() == {"somewhere": 1}

    streams = [keys.worker_stream(w, "events") for w in WORKERS[:6]]
    assert len(by_slot(streams)) > 1
    follower = StreamFollower(redis, block_ms=100)
    for stream in streams:
        await follower.start_at_end(stream)
    assert await follower.read() == []
    await append_many_to(redis, [(s, status("x", n)) for n, s in enumerate(streams)], 1000)
    got = await follower.read()
    assert sorted((s, m.config_version) for s, m in got) == sorted(  # type: ignore[union-attr]
        (s, n) for n, s in enumerate(streams)
    )
    assert await follower.read() == []


async def test_ingest_backlog_counts_every_node(bus: Bus) -> None:
    redis, settings, _keys = bus
    # diagnose reads the backlog under the settings' names (untagged here: every
    # worker's stream in a slot of its own, spread over every node)
    plain = settings.keys
    registry = WorkerRegistry(redis, plain)
    streams = []
    for w in WORKERS:
        await registry.heartbeat(WorkerInfo(id=w), ttl_s=60)
        stream = plain.worker_stream(w, "ingest")
        streams.append(stream)
        await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        await append(redis, stream, status(w, 1), 1000)
    seconds, micros = await redis.time()
    total, age = await ingest_backlog(redis, settings, float(seconds) + micros / 1e6 + 5)
    assert total == len(WORKERS)
    assert 5 <= age < 60


async def test_the_reader_lives_through_a_primary_failover(tmp_path: Path) -> None:
    """A primary holding some workers' streams is killed: the reader backs off while
    its replica takes over, then reads on; every message appended afterwards arrives,
    whichever node it went to."""
    with running_cluster(RedisCluster(tmp_path / "cluster")) as cluster:
        settings = fast_settings(cluster.url)
        keys = Keys(settings.key_prefix, cluster=True)
        streams = [keys.worker_stream(w, "events") for w in WORKERS]
        redis = cluster_client(cluster)
        reader = fleet_reader(redis, settings, keys)
        seen: set[tuple[str, int]] = set()
        arrived = anyio.Event()
        expected: set[tuple[str, int]] = set()

        async def handler(batch: list[Received]) -> None:
            nonlocal arrived
            seen.update((r.source, r.message.config_version) for r in batch)  # type: ignore[union-attr]
            if expected <= seen:
                arrived.set()

        async def send_all(n: int) -> None:
            """One message from every worker, each XADD repeated until it is taken."""
            for w in WORKERS:
                while True:
                    try:
                        await append(redis, keys.worker_stream(w, "events"), status(w, n), 1000)
                        break
                    except Exception:
                        await anyio.sleep(0.05)  # the cluster is still settling

        try:
            async with anyio.create_task_group() as tg:
                await tg.start(reader.run_received, handler)
                expected.update((w, 1) for w in WORKERS)
                await send_all(1)
                with anyio.fail_after(10):
                    await arrived.wait()
                victim = primaries_of(cluster, streams[:1]).pop()
                cluster.kill(victim)
                arrived = anyio.Event()
                expected.update((w, n) for w in WORKERS for n in (2, 3))
                await send_all(2)  # some wait for the replica to take over
                await anyio.to_thread.run_sync(cluster.wait_failover, victim)
                await send_all(3)
                with anyio.fail_after(20):
                    await arrived.wait()
                tg.cancel_scope.cancel()
            assert reader.episode.total > 0  # it did see the failure
            assert expected <= seen
        finally:
            await redis.aclose()
