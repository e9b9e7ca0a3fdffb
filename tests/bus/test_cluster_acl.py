"""Per-worker Redis users on a Redis Cluster (issue 13): the rules name the cluster's
hash-tagged keys and allow what redis-py's cluster client sends; ``hiscrm acl``'s
functions make a user on every node (replicas too); a worker logged in through a
cluster client reaches its own accounts in every bucket, its control shard channel and
its streams, and nothing of another worker's; its user survives a primary failover (it
was on the replica) and comes back on a node that restarted without an ACL file at the
Master's next grants pass (real local cluster, tests/redis_cluster.py)."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.crc import key_slot

from hiscrm_bus import acl
from hiscrm_bus.accounts import AccountStore
from hiscrm_bus.keys import CLUSTER_BUCKETS, Keys
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_worker.vault import SessionVault
from tests.redis_cluster import HOST, RedisCluster, running_cluster

pytestmark = [pytest.mark.real, pytest.mark.xdist_group("cluster-acl")]
KEYS = Keys("hiscrm:", cluster=True)
PASSWORDS = {"w1": "pw-one", "w2": "pw-two"}


def test_single_node_rules_give_each_key_only_its_commands() -> None:
    """On one Redis the names are untagged; no key at the top level, and each key in a
    selector with only the commands the worker sends to it (pinned deliberately: a
    change here changes what a stolen worker credential can do)."""
    assert acl.worker_rules(Keys("hiscrm:"), "w1", ["a2", "a1"]) == [
        "resetchannels",
        "&hiscrm:worker:w1:control",
        "-@all",
        *[
            "+auth",
            "+hello",
            "+ping",
            "+select",
            "+quit",
            "+reset",
            "+client|setname",
            "+subscribe",
            "+unsubscribe",
            "+multi",
            "+exec",
            "+discard",
        ],
        "resetkeys",
        "clearselectors",
        "(~hiscrm:worker:w1 +hset +hsetnx +hdel +pexpire +hgetall)",
        "(%W~hiscrm:workers +zadd)",
        "(%W~hiscrm:worker:w1:out:acks %W~hiscrm:worker:w1:out:events"
        " %W~hiscrm:worker:w1:out:ingest +xadd)",
        "(%R~hiscrm:worker:w1:accounts +smembers)",
        "(%R~hiscrm:account:a1 %R~hiscrm:account:a2 +hget +hgetall)",
        "(~hiscrm:account:a1:session ~hiscrm:account:a2:session +hgetall +hset +hincrby)",
    ]
    # owning nothing: no account selector at all
    assert acl.worker_key_rules(Keys("hiscrm:"), "w1", [])[-1] == (
        "(%R~hiscrm:worker:w1:accounts +smembers)"
    )
    assert acl.worker_rules(Keys("p*x:"), "w.1")[1] == "&p\\*x:worker:w.1:control"
    assert acl.admin_rules(Keys("hiscrm:")) == [
        "resetkeys",
        "~hiscrm:*",
        "resetchannels",
        "&hiscrm:*",
        "+@all",
        "-@dangerous",
        "+acl|setuser",
        "+acl|deluser",
        "+acl|getuser",
        "+acl|users",
        "+acl|list",
        "+acl|save",
        "+acl|whoami",
        "+info",
        "+client|setname",
        "+client|id",
    ]


def test_cluster_rules_name_tagged_keys_and_allow_a_cluster_client() -> None:
    rules = acl.worker_rules(KEYS, "w1", ["a1"])
    group = KEYS.group("w1")
    bucket = KEYS.bucket("a1")
    assert rules[1] == f"&hiscrm:{{w{group}}}:worker:w1:control"  # braces are not glob
    for command in ("cluster|slots", "command", "asking", "ssubscribe", "sunsubscribe"):
        assert f"+{command}" in rules
    for absent in ("+spublish", "+readonly", "+cluster|shards", "+cluster|nodes", "+keys"):
        assert absent not in rules
    # each selector's keys, by its commands
    selectors = {
        " ".join(w for w in r[1:-1].split() if w.startswith("+")): [
            w for w in r[1:-1].split() if not w.startswith("+")
        ]
        for r in rules
        if r.startswith("(")
    }
    assert selectors["+smembers"] == [
        f"%R~hiscrm:{{b{b}}}:worker:w1:accounts" for b in range(CLUSTER_BUCKETS)
    ]
    assert selectors["+hset +hsetnx +hdel +pexpire +hgetall"] == [f"~hiscrm:{{w{group}}}:worker:w1"]
    assert selectors["+xadd"] == [
        f"%W~hiscrm:{{w{group}}}:worker:w1:out:{kind}" for kind in ("acks", "events", "ingest")
    ]
    assert selectors["+hget +hgetall"] == [f"%R~hiscrm:{{b{bucket}}}:account:a1"]
    assert selectors["+hgetall +hset +hincrby"] == [f"~hiscrm:{{b{bucket}}}:account:a1:session"]
    assert selectors["+zadd"] == ["%W~hiscrm:workers"]  # the untagged index
    assert not [r for r in rules if r.startswith(("~", "%"))]  # no key at the top level


# -- on a real cluster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster for the module; its last test kills and restarts nodes."""
    with running_cluster(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


def cluster_client(cluster: RedisCluster, user: str | None = None) -> Redis:
    """An asyncio cluster client (as the default user, or as ``worker-<user>``), typed
    as Redis as ``make_client`` types it."""
    credentials = {} if user is None else {"username": acl.worker_user(user)}
    if user is not None:
        credentials["password"] = PASSWORDS[user]
    client = AsyncCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster.startup_nodes],
        socket_timeout=5,
        socket_connect_timeout=1,
        **credentials,
    )
    return cast(Redis, client)


def accounts_on_every_primary(cluster: RedisCluster, worker: str, count: int) -> list[str]:
    """``count`` account ids of ``worker`` whose buckets lie on every primary."""
    by_primary: dict[int, list[str]] = {p: [] for p in cluster.primaries()}
    i = 0
    while min(len(ids) for ids in by_primary.values()) < count // len(by_primary) + 1:
        account = f"{worker}-acc{i}"
        i += 1
        by_primary[cluster.owner_of(key_slot(KEYS.account(account).encode()))].append(account)
    return [a for ids in by_primary.values() for a in ids]


async def assign(admin: Redis, worker: str, accounts: list[str]) -> None:
    """What an assignment leaves in Redis: the account hashes and the worker's
    per-bucket sets (names from Keys, as the Master writes them)."""
    for account in accounts:
        await admin.hset(KEYS.account(account), mapping={"id": account, "worker_id": worker})
        await admin.sadd(KEYS.worker_accounts(worker, KEYS.bucket(account)), account)


async def move(admin: Redis, account: str, old: str, new: str) -> None:
    bucket = KEYS.bucket(account)
    await admin.srem(KEYS.worker_accounts(old, bucket), account)
    await admin.sadd(KEYS.worker_accounts(new, bucket), account)


def denied() -> Any:
    return pytest.raises(rexc.NoPermissionError)


async def subscribe(cluster: RedisCluster, admin: Redis, worker: str, channel: str) -> Any:
    """SSUBSCRIBE as ``worker-<worker>`` on the node that owns ``channel`` (as the
    control subscription does); returns the first reply (NoPermissionError raised)."""
    node = cast(AsyncCluster, admin).get_node_from_key(channel)
    assert node is not None
    plain = Redis(
        host=node.host,
        port=int(node.port),
        username=acl.worker_user(worker),
        password=PASSWORDS[worker],
        socket_timeout=5,
    )
    pubsub = plain.pubsub()
    try:
        await pubsub.ssubscribe(channel)
        with anyio.fail_after(5):
            while True:
                reply = await pubsub.get_message(timeout=1)
                if reply is not None and reply["type"] == "ssubscribe":
                    break
        delivered = await admin.spublish(channel, "hello")  # type: ignore[attr-defined]
        with anyio.fail_after(5):
            while True:
                reply = await pubsub.get_message(timeout=1)
                if reply is not None and reply["type"] == "smessage":
                    return delivered, reply["data"]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await plain.aclose()


def access(node: Any, user: str) -> list[tuple[frozenset[str], frozenset[str]]]:
    """A user's (commands, key patterns) on one node: its top level, then each selector
    (as sets: Redis lists them in an order of its own on each node)."""
    got = node.execute_command("ACL", "GETUSER", user)
    return [
        (frozenset(part["commands"].split()), frozenset(part["keys"].split()))
        for part in [got, *got["selectors"]]
    ]


def patterns(node: Any, user: str) -> set[str]:
    return {p for _commands, keys in access(node, user) for p in keys}


async def on_every_node(cluster: RedisCluster, user: str) -> dict[int, bool]:
    return {
        port: user in cluster.node_client(port).execute_command("ACL", "USERS")
        for port in cluster.ports
        if port in cluster.procs
    }


@pytest.fixture
async def admin(cluster: RedisCluster) -> AsyncIterator[Redis]:
    client = cluster_client(cluster)
    yield client
    await client.aclose()


async def test_a_worker_user_reaches_its_own_keys_on_every_node_and_nothing_else(
    cluster: RedisCluster, admin: Redis
) -> None:
    mine = accounts_on_every_primary(cluster, "w1", 6)
    theirs = accounts_on_every_primary(cluster, "w2", 3)
    await assign(admin, "w1", mine)
    await assign(admin, "w2", theirs)
    for worker in ("w1", "w2"):
        applied = await acl.add_worker(admin, KEYS, worker, PASSWORDS[worker])
        assert applied == acl.Applied(nodes=6, saved=0)  # no ACL file on these nodes
    assert await on_every_node(cluster, "worker-w1") == dict.fromkeys(cluster.ports, True)

    worker = cluster_client(cluster, "w1")
    try:
        # its accounts, in buckets on every primary; its per-bucket assignment sets
        for account in mine:
            assert await worker.hget(KEYS.account(account), "id") == account.encode()
            await worker.hset(KEYS.session(account), "blob", "sealed")
        owned: set[bytes] = set()
        for bucket in KEYS.buckets:
            owned |= await worker.smembers(KEYS.worker_accounts("w1", bucket))  # type: ignore[misc]
        assert owned == {a.encode() for a in mine}
        # its registry hash (in one MULTI), the untagged index, its streams
        async with worker.pipeline(transaction=True) as pipe:
            pipe.hset(KEYS.worker("w1"), "heartbeat_at", "now")
            pipe.pexpire(KEYS.worker("w1"), 10_000)
            await pipe.execute()
        await worker.zadd(KEYS.workers, {"w1": 1.0})
        for kind in ("acks", "events", "ingest"):
            await worker.xadd(KEYS.worker_stream("w1", kind), {"m": "x"})  # type: ignore[arg-type]
        # the same through the library, as the worker process sends it
        registry = WorkerRegistry(worker, KEYS)
        info = WorkerInfo(id="w1", instance="i-1")
        assert await registry.claim(info, 10) is None
        await registry.heartbeat(info, 10)
        await registry.release(info)
        assert await AccountStore(worker, KEYS).ids_of_worker("w1") == sorted(mine)
        vault = SessionVault(worker, KEYS, secrets.token_bytes(32), "w1")
        assert await vault.put(mine[0], {"cookies": []}) == 1
        # another worker's account, session, registry, streams; writing its own account
        for account in theirs:
            with denied():
                await worker.hgetall(KEYS.account(account))
            with denied():
                await worker.hgetall(KEYS.session(account))
        with denied():
            await worker.smembers(KEYS.worker_accounts("w2", KEYS.bucket(theirs[0])))  # type: ignore[misc]
        with denied():
            await worker.hset(KEYS.account(mine[0]), "worker_id", "w1")
        with denied():
            await worker.hset(KEYS.worker("w2"), "tasks", "{}")
        with denied():
            await worker.xadd(KEYS.worker_stream("w2", "acks"), {"m": "x"})  # type: ignore[arg-type]
        with denied():
            await worker.spublish(KEYS.control("w1"), "x")  # type: ignore[attr-defined]
        # its own keys, with any command but the one it sends there: no TTL or another
        # type on the index, no key planted under its stream names, no expiring a stream
        acks = KEYS.worker_stream("w1", "acks")
        out = acks.removesuffix("acks")
        for attack in (
            ("PEXPIRE", KEYS.workers, "1"),
            ("HSET", KEYS.workers, "x", "1"),
            ("DEL", KEYS.workers),
            ("HSET", out + "x", "capacity", "1000000"),
            ("ZADD", out + "x:accounts", "1", "zz"),
            ("PEXPIRE", acks, "1"),
            ("ZADD", KEYS.worker("w1"), "1", "x"),
            ("PEXPIRE", KEYS.worker_accounts("w1", KEYS.bucket(mine[0])), "1"),
        ):
            with denied():
                await worker.execute_command(*attack)
        assert await admin.pttl(KEYS.workers) == -1
        assert await admin.type(acks) == b"stream"
    finally:
        await worker.aclose()
    # its control channel (a shard channel), and not another worker's
    assert await subscribe(cluster, admin, "w1", KEYS.control("w1")) == (1, b"hello")
    with denied():
        await subscribe(cluster, admin, "w1", KEYS.control("w2"))

    # the read access follows an account that moves, on every node
    grants = acl.Grants(admin, KEYS)
    await move(admin, theirs[0], "w2", "w1")
    assert await grants.sync(["w1", "w2"]) == 2
    for port in cluster.ports:
        assert f"%R~{KEYS.account(theirs[0])}" in patterns(cluster.node_client(port), "worker-w1")
    worker = cluster_client(cluster, "w1")
    other = cluster_client(cluster, "w2")
    try:
        assert await worker.hget(KEYS.account(theirs[0]), "id") == theirs[0].encode()
        with denied():
            await other.hget(KEYS.account(theirs[0]), "id")
    finally:
        await worker.aclose()
        await other.aclose()

    shown = await acl.rules_on_nodes(admin, ["worker-w1"])
    # the same rules on every node (Redis lists the commands, in each selector too, in
    # an order of its own)
    assert len(shown) == 6
    first, *others = [r["worker-w1"].split() for r in shown.values()]  # type: ignore[index]
    assert all(acl.same_rules(first, other) for other in others)
    assert set(await acl.rules_of(admin, ["worker-w1"])) == {"worker-w1"}


def hiscrm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_acl_commands_on_a_cluster(cluster: RedisCluster, tmp_path: Path) -> None:
    url = cluster.cluster_url
    pw_file = tmp_path / "w9.password"
    added = hiscrm("acl", "add-worker", "w9", "--password-file", str(pw_file), "--redis-url", url)
    assert added.returncode == 0, added.stderr
    assert "user worker-w9 created on 6 nodes" in added.stdout
    assert "redis+cluster://worker-w9@" in added.stdout
    assert "6 of 6 nodes have no ACL file" in added.stderr
    for port in cluster.ports:
        user = cluster.node_client(port).execute_command("ACL", "GETUSER", "worker-w9")
        assert "+asking" in user["commands"]
        assert any("{b63}" in p for p in patterns(cluster.node_client(port), "worker-w9"))
    shown = hiscrm("acl", "show", "w9", "--redis-url", url)
    assert shown.returncode == 0, shown.stderr
    assert "the same on 6 of 6 nodes" in shown.stdout
    cluster.node_client(cluster.ports[-1]).execute_command("ACL", "DELUSER", "worker-w9")
    shown = hiscrm("acl", "show", "w9", "--redis-url", url)
    assert f"the same on 5 of 6 nodes; missing on {HOST}:{cluster.ports[-1]}" in shown.stdout
    removed = hiscrm("acl", "remove-worker", "w9", "--redis-url", url)
    assert removed.returncode == 0, removed.stderr
    assert "user worker-w9 removed on 6 nodes" in removed.stdout
    assert hiscrm("acl", "remove-worker", "w9", "--redis-url", url).returncode == 1
    rendered = tmp_path / "users.acl"
    done = hiscrm(
        "acl", "render", "--cluster", "--out", str(rendered), "--worker", "w9",
        "--secrets-dir", str(tmp_path / "secrets"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = next(x for x in rendered.read_text().splitlines() if x.startswith("user worker-w9 "))
    assert f"&hiscrm:{{w{KEYS.group('w9')}}}:worker:w9:control" in line and "+asking" in line


async def test_users_survive_a_failover_and_come_back_on_a_restarted_node(
    cluster: RedisCluster, admin: Redis
) -> None:
    """Runs last in the module: it kills and restarts nodes."""
    mine = accounts_on_every_primary(cluster, "w1", 3)
    await assign(admin, "w1", mine)
    await acl.add_worker(admin, KEYS, "w1", PASSWORDS["w1"])
    grants = acl.Grants(admin, KEYS)
    assert await grants.ensure()  # the first pass: every node is new to it
    assert not await grants.ensure()  # nothing changed since

    # the primary of one of its accounts dies: its replica, promoted, knows the user
    primary = cluster.owner_of(key_slot(KEYS.account(mine[0]).encode()))
    replica = cluster.replica_of(primary)
    cluster.kill(primary)
    assert cluster.wait_failover(primary) == replica
    worker = cluster_client(cluster, "w1")
    try:
        for account in mine:
            assert await worker.hget(KEYS.account(account), "id") == account.encode()
    finally:
        await worker.aclose()
    assert not await grants.ensure()  # a node left: nothing to apply

    # the old primary restarts (no ACL file: it has no users) and rejoins as a replica
    cluster.restart(primary)
    assert "worker-w1" not in cluster.node_client(primary).execute_command("ACL", "USERS")
    restored = grants.restored
    assert await grants.ensure()
    node = cluster.node_client(primary)
    users = set(node.execute_command("ACL", "USERS"))
    assert users == set(cluster.node_client(replica).execute_command("ACL", "USERS"))
    assert grants.restored == restored + len(users - {"default"})  # w1's, and w2's
    assert access(node, "worker-w1") == access(cluster.node_client(replica), "worker-w1")
    # it logs in there and reads what it owns once that node is a primary again
    cluster.promote(primary)
    worker = cluster_client(cluster, "w1")
    try:
        for account in mine:
            assert await worker.hget(KEYS.account(account), "id") == account.encode()
    finally:
        await worker.aclose()

    # a primary restarted in place (before a failover) loses its users too
    cluster.restart(replica)
    assert await grants.ensure()
    assert "worker-w1" in cluster.node_client(replica).execute_command("ACL", "USERS")
    assert not await grants.ensure()

    # a node back with an old ACL file: a worker removed meanwhile and an old password
    # of another; the next pass makes it the same as the settled nodes
    # (a replica: a primary of this cluster, which keeps no data on disk, would come
    # back empty)
    stale = next(
        n.port
        for n in cluster.nodes
        if n.role == "replica" and not n.failed and n.port not in (primary, replica)
    )
    cluster.restart(stale)
    node = cluster.node_client(stale)
    node.execute_command("ACL", "SETUSER", "worker-ghost", "on", ">ghost-password", "~*", "+@all")
    node.execute_command("ACL", "SETUSER", "worker-w1", "on", ">an-old-password", "~*", "+@all")
    assert await grants.ensure()
    users = set(node.execute_command("ACL", "USERS"))
    assert "worker-ghost" not in users
    assert users == set(cluster.node_client(replica).execute_command("ACL", "USERS"))
    mine_there = node.execute_command("ACL", "GETUSER", "worker-w1")
    theirs = cluster.node_client(replica).execute_command("ACL", "GETUSER", "worker-w1")
    assert mine_there["passwords"] == theirs["passwords"]
    assert access(node, "worker-w1") == access(cluster.node_client(replica), "worker-w1")
    with pytest.raises(rexc.AuthenticationError):
        node.execute_command("AUTH", "worker-w1", "an-old-password")
    assert not await grants.ensure()
