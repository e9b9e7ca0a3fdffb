"""The local Redis Cluster of the tests (tests/redis_cluster.py): it serves every slot
from its three primaries, a killed primary's replica takes over with the data, a
reshard moves slots with their keys, and stop() leaves no process behind."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient
from redis.crc import key_slot

from tests.redis_cluster import NodeInfo, RedisCluster, command, running_cluster

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster for the tests that only read and write keys."""
    with running_cluster(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A cluster of this test's own, for tests that kill nodes or move slots."""
    with running_cluster(RedisCluster(tmp_path / "cluster")) as cluster:
        yield cluster


@pytest.fixture
def client(cluster: RedisCluster) -> Iterator[ClusterClient]:
    with cluster.client(decode_responses=True) as client:
        yield client


def node_of(cluster: RedisCluster, port: int) -> NodeInfo:
    return next(n for n in cluster.nodes if n.port == port)


def owns(node: NodeInfo, slot: int) -> bool:
    return any(start <= slot <= end for start, end in node.slots)


def key_on(node: NodeInfo, name: str) -> str:
    """A key ``{tag}name`` whose hash tag puts it in a slot of ``node``."""
    for i in itertools.count():
        key = f"{{t{i}}}{name}"
        if owns(node, key_slot(key.encode())):
            return key
    raise AssertionError("unreachable")


def shard_slot_counts(cluster: RedisCluster) -> dict[int, int]:
    """Each primary's slot count as CLUSTER SHARDS tells it."""
    counts = {}
    for shard in command(cluster.node_client(cluster.ports[0]), "CLUSTER", "SHARDS"):
        ranges = shard["slots"]  # start, end, start, end, ...
        slots = sum(end - start + 1 for start, end in zip(ranges[::2], ranges[1::2], strict=True))
        for node in shard["nodes"]:
            if node["role"] == "master" and node["health"] == "online":
                counts[node["port"]] = slots
    return counts


def nothing_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_three_primaries_each_with_a_replica(cluster: RedisCluster) -> None:
    nodes = cluster.nodes
    assert sorted(n.port for n in nodes) == sorted(cluster.ports)
    assert [(h, p) for h, p in cluster.startup_nodes] == [("127.0.0.1", p) for p in cluster.ports]
    assert cluster.url == f"redis://127.0.0.1:{cluster.ports[0]}"
    primaries = cluster.primaries()
    assert len(primaries) == 3
    assert sum(node_of(cluster, p).slot_count for p in primaries) == 16384
    replicas = [cluster.replica_of(p) for p in primaries]
    assert sorted(primaries + replicas) == sorted(cluster.ports)
    for primary, replica in zip(primaries, replicas, strict=True):
        node = node_of(cluster, replica)
        assert node.role == "replica"
        assert node.primary_id == node_of(cluster, primary).node_id
        assert cluster.node_client(replica).info("replication")["master_link_status"] == "up"
    for port in cluster.ports:
        assert port + 10000 <= 65535
        info = command(cluster.node_client(port), "CLUSTER", "INFO")
        assert info.startswith("cluster_state:ok\r\n")


def test_every_primary_serves_its_keys(cluster: RedisCluster, client: ClusterClient) -> None:
    keys = {port: key_on(node_of(cluster, port), "serves") for port in cluster.primaries()}
    for port, key in keys.items():
        assert client.set(key, f"on {port}")
    for port, key in keys.items():
        assert client.get(key) == f"on {port}"
        # the key is on that primary itself
        assert cluster.node_client(port).get(key) == f"on {port}"


def test_flush_empties_every_primary(cluster: RedisCluster, client: ClusterClient) -> None:
    for port in cluster.primaries():
        client.set(key_on(node_of(cluster, port), "flushed"), "x")
    cluster.flush()
    assert [cluster.node_client(p).dbsize() for p in cluster.primaries()] == [0, 0, 0]


def test_a_killed_primarys_replica_takes_over_with_the_data(own_cluster: RedisCluster) -> None:
    cluster = own_cluster
    primary = cluster.primaries()[1]
    replica = cluster.replica_of(primary)
    slots = node_of(cluster, primary).slots
    key = key_on(node_of(cluster, primary), "kept")
    with cluster.client(decode_responses=True) as client:
        # the write and its WAIT on one connection of the primary: the replica has it
        with client.pipeline(transaction=False) as pipe:
            pipe.set(key, "before")
            pipe.execute_command("WAIT", 1, 1000, target_nodes=client.get_node_from_key(key))
            assert pipe.execute() == [True, 1]

        cluster.kill(primary)
        assert primary not in cluster.procs
        assert cluster.wait_failover(primary) == replica
        assert command(cluster.node_client(replica), "ROLE")[0] == "master"
        assert node_of(cluster, replica).slots == slots
        assert primary not in cluster.primaries()
        assert client.get(key) == "before"
        assert client.set(key, "after")

    # the old primary comes back as the replica of the node that replaced it
    cluster.restart(primary)
    assert node_of(cluster, primary).role == "replica"
    assert cluster.replica_of(replica) == primary
    with cluster.node_client(primary).pipeline(transaction=False) as pipe:
        pipe.execute_command("READONLY")  # on a replica, for this connection
        pipe.get(key)
        assert pipe.execute() == [True, "after"]
    # a client that knows only the old primary finds the data on the new one
    with ClusterClient(startup_nodes=[ClusterNode("127.0.0.1", primary)]) as client:
        assert client.get(key) == b"after"


def test_reshard_moves_slots_with_their_keys(own_cluster: RedisCluster) -> None:
    cluster = own_cluster
    source, target, _ = cluster.primaries()
    before = shard_slot_counts(cluster)
    source_slots = node_of(cluster, source).slots
    # a key in every slot of the source
    keys = {}
    for i in itertools.count():
        slot = key_slot(f"{{r{i}}}".encode())
        if slot not in keys and any(a <= slot <= b for a, b in source_slots):
            keys[slot] = f"{{r{i}}}key"
            if len(keys) == sum(b - a + 1 for a, b in source_slots):
                break
    with cluster.client(decode_responses=True) as client:
        with client.pipeline(transaction=False) as pipe:
            for slot, key in keys.items():
                pipe.set(key, slot)
            pipe.execute()

        cluster.reshard(source, target, 100)

        after = shard_slot_counts(cluster)
        assert after[source] == before[source] - 100
        assert after[target] == before[target] + 100
        assert sum(after.values()) == 16384
        moved = [s for s in keys if owns(node_of(cluster, target), s)]
        assert len(moved) == 100
        target_client = cluster.node_client(target)
        for slot in moved:
            assert target_client.get(keys[slot]) == str(slot)  # the key moved too
        with client.pipeline(transaction=False) as pipe:
            for key in keys.values():
                pipe.get(key)
            assert pipe.execute() == [str(slot) for slot in keys]


def test_stop_leaves_no_process(own_cluster: RedisCluster) -> None:
    cluster = own_cluster
    cluster.kill(cluster.replica_of(cluster.primaries()[0]))
    pids = cluster.pids()
    assert len(pids) == 5
    cluster.stop()
    assert cluster.procs == {}
    assert [pid for pid in pids if Path(f"/proc/{pid}").exists()] == []
    for port in cluster.ports:
        # nothing listens on the port nor on its bus port (binding the bus port may
        # still fail a while: the bus's closed connections linger in TIME_WAIT)
        assert nothing_listens(port)
        assert nothing_listens(port + 10000)
        assert (cluster.node_dir(port) / "nodes.conf").exists()  # its files stay


def test_a_node_that_does_not_start_says_why(tmp_path: Path) -> None:
    cluster = RedisCluster(tmp_path, extra_config=["maxmemory lots"])
    said = r"(?s)did not start on \d+ \(see .*redis\.log\):.*maxmemory"
    with pytest.raises(RuntimeError, match=said):
        cluster.start()
    assert cluster.procs == {}
