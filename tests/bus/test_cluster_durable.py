"""On a Redis Cluster a config update returns only once a replica has it: a primary
that dies right after answering cannot take back an update the caller was told about
(Redis replicates asynchronously; hiscrm waits with WAIT 1 on the write's connection)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.connection import make_client
from hiscrm_bus.errors import BusUnavailable
from hiscrm_bus.scripts import publish_each
from hiscrm_bus.settings import BusSettings
from hiscrm_master.updates import Updates
from tests.conftest import fast_settings
from tests.redis_cluster import RedisCluster, command, running_cluster

pytestmark = [pytest.mark.real, pytest.mark.xdist_group("cluster-durable")]

STOPPED_S = 0.4  # how long the replica is frozen


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with running_cluster(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


@pytest.fixture
async def bus(cluster: RedisCluster) -> AsyncIterator[tuple[Redis, BusSettings]]:
    settings = fast_settings(cluster.cluster_url)
    client = make_client(settings)
    yield client, settings
    await client.aclose()


class Frozen:
    """The node on ``port`` stopped (SIGSTOP) now and continued (SIGCONT) ``seconds``
    later by a timer; ``thawing`` is set just before it continues."""

    def __init__(self, cluster: RedisCluster, port: int, seconds: float) -> None:
        self.pid = cluster.procs[port].pid
        self.thawing = threading.Event()
        os.kill(self.pid, signal.SIGSTOP)
        self.timer = threading.Timer(seconds, self._thaw)
        self.timer.start()

    def _thaw(self) -> None:
        self.thawing.set()
        os.kill(self.pid, signal.SIGCONT)

    def join(self) -> None:
        self.timer.join()


def replica_has(cluster: RedisCluster, replica: int, key: str, field: str) -> str | None:
    node = cluster.node_client(replica)
    command(node, "READONLY")
    value = node.hget(key, field)
    return value.decode() if isinstance(value, bytes) else value


async def test_a_change_returns_once_the_replica_has_it(
    cluster: RedisCluster, bus: tuple[Redis, BusSettings]
) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, sender="test")
    await updates.create(AccountConfig(id="acc-1", platform="synthetic", worker_id="w1"))
    key = settings.keys.account("acc-1")
    primary = cluster.owner_of(int(redis.keyslot(key)))
    replica = cluster.replica_of(primary)

    frozen = Frozen(cluster, replica, STOPPED_S)
    result, sent = await updates.change("acc-1", {"name": "durable"}, "admin_update")
    # change() returned only once the replica ran again and confirmed the write (a
    # change that did not wait returns within milliseconds, while it is still stopped)
    assert frozen.thawing.is_set()
    assert replica_has(cluster, replica, key, "name") == "durable"
    assert replica_has(cluster, replica, key, "config_version") == str(result.version)
    assert sent is not None
    record = settings.keys.update(sent.update_id, settings.keys.bucket("acc-1"))
    assert replica_has(cluster, replica, record, "status") == "pending"
    frozen.join()


async def test_a_fleet_change_returns_once_every_replica_has_it(
    cluster: RedisCluster, bus: tuple[Redis, BusSettings]
) -> None:
    redis, settings = bus
    updates = Updates(redis, settings, sender="test")
    ids = [f"acc-{n}" for n in range(30)]
    for account_id in ids:
        await updates.create(AccountConfig(id=account_id, platform="synthetic", worker_id="w1"))
    primary = cluster.primaries()[0]
    replica = cluster.replica_of(primary)
    on_it = [
        a for a in ids if cluster.owner_of(int(redis.keyslot(settings.keys.account(a)))) == primary
    ]
    assert on_it  # 30 accounts over 64 buckets: some live on every primary

    frozen = Frozen(cluster, replica, STOPPED_S)
    batch = await updates.selection({"name": "fleet"})
    results, sent = await updates.change_many(batch, "admin_update")
    assert frozen.thawing.is_set()  # it waited for the stopped replica
    assert all(not isinstance(r, Exception) for r in results)
    assert len([m for m in sent if m is not None]) == len(ids)
    for account_id in on_it:
        key = settings.keys.account(account_id)
        assert replica_has(cluster, replica, key, "name") == "fleet"
    frozen.join()


async def test_single_redis_writes_do_not_wait(redis_server: object, tmp_path: Path) -> None:
    """On one Redis there is no replica to wait for: the same calls, no WAIT."""
    from tests.redis_server import RedisServer

    assert isinstance(redis_server, RedisServer)
    settings = fast_settings(redis_server.url)
    client = make_client(settings)
    try:
        updates = Updates(client, settings, sender="test")
        await updates.create(AccountConfig(id="acc-1", platform="synthetic", worker_id="w1"))
        before = await client.info("commandstats")
        await updates.change("acc-1", {"name": "x"}, "admin_update")
        after = await client.info("commandstats")
        assert after.get("cmdstat_wait") == before.get("cmdstat_wait")
    finally:
        await client.aclose()


async def test_a_batch_meeting_a_dead_primary_is_one_bus_unavailable(tmp_path: Path) -> None:
    """A fleet-wide change while a primary is down fails as it would on one Redis that
    is down: BusUnavailable, which every loop backs off on (not an exception group)."""
    with running_cluster(RedisCluster(tmp_path / "cluster")) as cluster:
        settings = fast_settings(cluster.cluster_url)
        client = make_client(settings)
        try:
            updates = Updates(client, settings, sender="test")
            ids = [f"acc-{n}" for n in range(30)]
            for account_id in ids:
                config = AccountConfig(id=account_id, platform="synthetic", worker_id="w1")
                await updates.create(config)
            batch = await updates.selection({"name": "x"})
            after = await updates.tracker.last_outcome_id()
            cluster.kill(cluster.primaries()[0])  # the client's map still names it
            with pytest.raises(BusUnavailable):
                await updates.change_many(batch, "admin_update")
            with pytest.raises(BusUnavailable):
                await publish_each(
                    client, [(settings.keys.control(f"w{n}"), b"x") for n in range(30)]
                )
            with pytest.raises(BusUnavailable):  # a wait that follows every bucket
                await updates.tracker.wait_outcomes(["never"], after, timeout_s=20)
        finally:
            await client.aclose()
