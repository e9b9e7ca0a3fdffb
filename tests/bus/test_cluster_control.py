"""Control messages on a Redis Cluster: SPUBLISH reaches the worker's SSUBSCRIBE on the
node that serves its channel's slot, and the subscription follows the slot — moved to
another primary, its primary killed and replaced, or handed over in a manual failover —
resubscribing and reconciling each time (real local cluster, tests/redis_cluster.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.connection import make_client
from hiscrm_bus.control import ControlSubscription, publish
from hiscrm_bus.deadletter import DeadLetters
from hiscrm_bus.messages import Message
from hiscrm_bus.settings import BusSettings
from tests.bus.test_control import Probe, note, subscription
from tests.conftest import fast_settings
from tests.redis_cluster import HOST, RedisCluster, command, running_cluster

pytestmark = [pytest.mark.real, pytest.mark.xdist_group("cluster-control")]

Bus = tuple[Redis, BusSettings]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster for the tests that move slots; a test that kills or demotes a node
    has one of its own (``own_cluster``)."""
    with running_cluster(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    with running_cluster(RedisCluster(tmp_path / "cluster")) as cluster:
        yield cluster


async def bus_of(cluster: RedisCluster) -> AsyncIterator[Bus]:
    settings = fast_settings(cluster.cluster_url)
    assert settings.cluster
    client = make_client(settings)
    yield client, settings
    await client.aclose()


@pytest.fixture
async def bus(cluster: RedisCluster) -> AsyncIterator[Bus]:
    async for bus in bus_of(cluster):
        yield bus


@pytest.fixture
async def own_bus(own_cluster: RedisCluster) -> AsyncIterator[Bus]:
    async for bus in bus_of(own_cluster):
        yield bus


def slot_of(redis: Redis, settings: BusSettings, worker_id: str = "w1") -> int:
    return int(redis.keyslot(settings.keys.control(worker_id)))


async def followed_to(
    probe: Probe, sub: ControlSubscription, bus: Bus, port: int, *, version: int
) -> None:
    """The subscription moved to the node on ``port`` (its second subscribe, reconciled)
    and a message published there now arrives."""
    redis, settings = bus
    await probe.wait_subscribed(2, timeout_s=30)
    assert sub.node == (HOST, port)
    assert await publish(redis, settings, "w1", note(version)) == 1
    assert (await probe.next()).config_version == version


def other_primary(cluster: RedisCluster, port: int) -> int:
    return next(p for p in cluster.primaries() if p != port)


async def test_spublish_reaches_the_subscription_on_the_channels_node(
    cluster: RedisCluster, bus: Bus
) -> None:
    redis, settings = bus
    async with Probe() as probe, anyio.create_task_group() as tg:
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        assert (probe.subscribed, sub.subscriptions) == (1, 1)
        owner = cluster.owner_of(slot_of(redis, settings))
        assert sub.node == (HOST, owner)
        # a shard channel: the owner knows the subscriber, no other node does
        channel = settings.keys.control("w1")
        for port in cluster.ports:
            (name, count) = command(cluster.node_client(port), "PUBSUB", "SHARDNUMSUB", channel)
            assert (name, count) == (channel, 1 if port == owner else 0)
        assert await publish(redis, settings, "w2", note(0)) == 0  # someone else's channel
        for n in (1, 2, 3):
            assert await publish(redis, settings, "w1", note(n)) == 1
        assert [(await probe.next()).config_version for _ in range(3)] == [1, 2, 3]
        assert probe.subscribed == 1
        tg.cancel_scope.cancel()


async def test_a_moved_slot_is_followed_and_reconciled(cluster: RedisCluster, bus: Bus) -> None:
    redis, settings = bus
    slot = slot_of(redis, settings)
    async with Probe() as probe, anyio.create_task_group() as tg:
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        for round_ in (1, 2):
            target = other_primary(cluster, cluster.owner_of(slot))
            await anyio.to_thread.run_sync(cluster.move_slot, slot, target)
            # the old owner unsubscribed us: subscribed again on the new one, reconciled
            await probe.wait_subscribed(1 + round_)
            assert sub.node == (HOST, target)
            assert await publish(redis, settings, "w1", note(round_)) == 1
            assert (await probe.next()).config_version == round_
        assert (probe.subscribed, sub.subscriptions) == (3, 3)
        tg.cancel_scope.cancel()


async def test_a_slot_moved_by_redis_cli_reshard_is_followed(
    cluster: RedisCluster, bus: Bus
) -> None:
    redis, settings = bus
    slot = slot_of(redis, settings)
    owner = cluster.owner_of(slot)
    # redis-cli moves a source's lowest slots first: give the owner's lowest slots
    # away until the channel's slot goes with them
    below = sum(
        min(end, slot) - start + 1
        for node in cluster.nodes
        if node.port == owner
        for start, end in node.slots
        if start <= slot
    )
    target = other_primary(cluster, owner)
    async with Probe() as probe, anyio.create_task_group() as tg:
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        await anyio.to_thread.run_sync(cluster.reshard, owner, target, below)
        assert cluster.owner_of(slot) == target
        await followed_to(probe, sub, (redis, settings), target, version=7)
        tg.cancel_scope.cancel()


async def test_a_killed_owner_is_replaced_and_followed(
    own_cluster: RedisCluster, own_bus: Bus
) -> None:
    cluster, (redis, settings) = own_cluster, own_bus
    slot = slot_of(redis, settings)
    owner = cluster.owner_of(slot)
    replica = cluster.replica_of(owner)
    async with Probe() as probe, anyio.create_task_group() as tg:
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        await anyio.to_thread.run_sync(cluster.kill, owner)
        assert await anyio.to_thread.run_sync(cluster.wait_failover, owner) == replica
        await followed_to(probe, sub, (redis, settings), replica, version=1)
        # the old owner comes back as a replica: nothing changes for the subscription
        await anyio.to_thread.run_sync(cluster.restart, owner)
        assert await publish(redis, settings, "w1", note(2)) == 1
        assert (await probe.next()).config_version == 2
        assert (probe.subscribed, sub.node) == (2, (HOST, replica))
        tg.cancel_scope.cancel()


async def test_a_manual_failover_is_followed(own_cluster: RedisCluster, own_bus: Bus) -> None:
    cluster, (redis, settings) = own_cluster, own_bus
    slot = slot_of(redis, settings)
    owner = cluster.owner_of(slot)
    replica = cluster.replica_of(owner)
    async with Probe() as probe, anyio.create_task_group() as tg:
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        # the owner turns replica: it unsubscribes its shard channels' subscribers
        await anyio.to_thread.run_sync(cluster.promote, replica)
        await followed_to(probe, sub, (redis, settings), replica, version=1)
        tg.cancel_scope.cancel()


async def test_a_silently_dead_node_connection_is_found_by_ping(
    cluster: RedisCluster, bus: Bus
) -> None:
    redis, settings = bus
    async with Probe() as probe, anyio.create_task_group() as tg:
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        assert sub.node is not None
        # the owner answers nothing for a while (our PING neither): the subscription
        # gives the connection up and subscribes again once it answers
        pause_ms = int((settings.ping_interval_s + settings.ping_timeout_s) * 1000) + 500
        command(cluster.node_client(sub.node[1]), "CLIENT", "PAUSE", str(pause_ms), "ALL")
        await probe.wait_subscribed(2)
        assert await publish(redis, settings, "w1", note(1)) == 1
        assert (await probe.next()).config_version == 1
        tg.cancel_scope.cancel()


async def test_a_burst_handled_while_the_slot_moves_is_kept(
    cluster: RedisCluster, bus: Bus
) -> None:
    """Messages that arrived before the node's ``sunsubscribe`` are handled, then the
    subscription moves on."""
    redis, settings = bus
    slot = slot_of(redis, settings)
    bursts: list[list[int]] = []
    release = anyio.Event()
    got_first = anyio.Event()
    received = anyio.Event()

    async def burst(messages: list[Message]) -> None:
        bursts.append([m.config_version for m in messages])
        got_first.set()
        if len(bursts) == 1:
            await release.wait()
        if sum(map(len, bursts)) == 4:
            received.set()

    async with Probe() as probe, anyio.create_task_group() as tg:
        sub = ControlSubscription(
            settings,
            "w1",
            probe.handler,
            probe.on_subscribed,
            DeadLetters(redis, settings),
            burst=burst,
        )
        await tg.start(sub.run)
        await publish(redis, settings, "w1", note(1))
        with anyio.fail_after(5):
            await got_first.wait()  # the handler holds the first one
        for n in (2, 3):
            assert await publish(redis, settings, "w1", note(n)) == 1
        await anyio.to_thread.run_sync(
            cluster.move_slot, slot, other_primary(cluster, cluster.owner_of(slot))
        )
        release.set()
        await probe.wait_subscribed(2)
        assert await publish(redis, settings, "w1", note(4)) == 1
        with anyio.fail_after(5):
            await received.wait()
        assert bursts == [[1], [2, 3], [4]]
        tg.cancel_scope.cancel()


async def test_garbage_on_a_shard_channel_is_dead_lettered(bus: Bus) -> None:
    redis, settings = bus
    async with Probe() as probe, anyio.create_task_group() as tg:
        await tg.start(subscription(redis, settings, probe).run)
        assert await redis.spublish(settings.keys.control("w1"), b"{not json") == 1
        assert await publish(redis, settings, "w1", note(5)) == 1
        assert (await probe.next()).config_version == 5
        entries = await redis.xrange(settings.keys.deadletter)
        assert len(entries) == 1
        assert entries[0][1][b"source"] == settings.keys.control("w1").encode()
        tg.cancel_scope.cancel()
