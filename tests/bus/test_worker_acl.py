"""A worker's Redis user on a real redis-server: everything a worker sends through the
library works under it, and a stolen worker credential cannot use a key it may touch
for anything but what the worker does there (each key comes with its own commands, in
an ACL selector): no PEXPIRE or HSET on the worker index, no hash or sorted set planted
under its stream names, no expiring its own streams. The Master's grant sync rewrites
a user's selectors in one step, so a worker's reads never fail while it runs."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
import pytest
from redis import exceptions as rexc
from redis.asyncio import Redis

from hiscrm_bus import acl
from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.keys import STREAM_KINDS, Keys
from hiscrm_bus.messages import LoginSuccess
from hiscrm_bus.streams import append_each
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_worker.vault import SessionVault
from tests.redis_server import RedisServer, running

pytestmark = pytest.mark.real
KEYS = Keys("hiscrm:")
PASSWORDS = {"w1": "pw-one", "w2": "pw-two"}
GROUP = "masters"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of this module's own: its users are no other test's business."""
    with running(RedisServer(tmp_path_factory.mktemp("worker-acl"))) as server:
        yield server


@dataclass
class Fleet:
    server: RedisServer
    admin: Redis

    def worker(self, worker_id: str) -> Redis:
        return Redis(
            host="127.0.0.1",
            port=self.server.port,
            username=acl.worker_user(worker_id),
            password=PASSWORDS[worker_id],
        )


@pytest.fixture
async def fleet(server: RedisServer) -> AsyncIterator[Fleet]:
    """acc-1 owned by w1, acc-2 by w2, both in the worker index; w1's acks stream with
    the Masters' group; both users made as ``hiscrm acl add-worker`` makes them."""
    admin = Redis(host="127.0.0.1", port=server.port)
    try:
        await admin.flushall()
        for user in await admin.acl_users():
            if user.startswith(acl.WORKER_USER_PREFIX):
                await admin.acl_deluser(user)
        store = AccountStore(admin, KEYS)
        await store.create(AccountConfig(id="acc-1", platform="douyin", worker_id="w1"))
        await store.create(AccountConfig(id="acc-2", platform="douyin", worker_id="w2"))
        await admin.zadd(KEYS.workers, {"w1": 1.0, "w2": 1.0})
        acks = KEYS.worker_stream("w1", "acks")
        await admin.xgroup_create(acks, GROUP, id="0", mkstream=True)
        for worker_id, password in PASSWORDS.items():
            await acl.add_worker(admin, KEYS, worker_id, password)
        await admin.acl_log_reset()
        yield Fleet(server, admin)
    finally:
        await admin.aclose()


async def test_a_worker_user_does_everything_a_worker_does(fleet: Fleet) -> None:
    w1 = fleet.worker("w1")
    try:
        # the registry: claim the id, take it over, heartbeat, release on a clean stop
        registry = WorkerRegistry(w1, KEYS)
        info = WorkerInfo(id="w1", instance="i-1", host="h", capacity=5)
        assert await registry.claim(info, 10) is None
        await registry.take_over(info)
        await registry.heartbeat(info, 10)
        await registry.release(info)
        # what it owns, and their config
        store = AccountStore(w1, KEYS)
        assert await store.ids_of_worker("w1") == ["acc-1"]
        assert (await store.get("acc-1")).worker_id == "w1"
        [raw] = await store.get_each(["acc-1"])
        assert isinstance(raw, dict) and raw[b"id"] == b"acc-1"
        assert await store.versions(["acc-1"]) == {"acc-1": 1}
        # its accounts' sealed browser sessions
        vault = SessionVault(w1, KEYS, secrets.token_bytes(32), "w1")
        assert await vault.put("acc-1", {"cookies": []}) == 1
        stored = await vault.get("acc-1")
        assert stored is not None and stored.state == {"cookies": []}
        # its outgoing streams (XADD with MAXLEN ~)
        message = LoginSuccess(
            sender="w1", account_id="acc-1", worker_id="w1", platform_user_id="dy-1"
        )
        sent = [(KEYS.worker_stream("w1", kind), message) for kind in STREAM_KINDS]
        assert await append_each(w1, sent, 100) == [None, None, None]
        # its control channel
        pubsub = w1.pubsub()
        await pubsub.subscribe(KEYS.control("w1"))
        with anyio.fail_after(5):
            while (reply := await pubsub.get_message(timeout=1)) is None:
                pass
        assert reply["type"] == "subscribe"
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await w1.aclose()
    # the Master sees the worker and what it sent
    assert (await WorkerRegistry(fleet.admin, KEYS).get("w1")) is not None
    for kind in STREAM_KINDS:
        assert await fleet.admin.xlen(KEYS.worker_stream("w1", kind)) == 1
    assert await fleet.admin.acl_log() == []  # nothing of it was refused


OUT = KEYS.worker_stream("w1", "acks").removesuffix("acks")  # hiscrm:worker:w1:out:
ATTACKS: dict[str, tuple[str, ...]] = {
    # the worker index: a wrong type or a TTL there halts every Master reader
    "pexpire-index": ("PEXPIRE", KEYS.workers, "1"),
    "expire-index": ("EXPIRE", KEYS.workers, "1"),
    "hset-index": ("HSET", KEYS.workers, "x", "1"),
    "del-index": ("DEL", KEYS.workers),
    "zrem-index": ("ZREM", KEYS.workers, "w2"),
    # keys planted under its stream names: a fake live worker, wrong types
    "hset-under-out": ("HSET", OUT + "x", "capacity", "1000000"),
    "zadd-under-out": ("ZADD", OUT + "x:accounts", "1", "zz"),
    "xadd-other-stream": ("XADD", OUT + "x", "*", "m", "x"),
    # its own streams: deleting one drops the Masters' consumer group
    "pexpire-own-stream": ("PEXPIRE", KEYS.worker_stream("w1", "acks"), "1"),
    "del-own-stream": ("DEL", KEYS.worker_stream("w1", "acks")),
    "xtrim-own-stream": ("XTRIM", KEYS.worker_stream("w1", "acks"), "MAXLEN", "0"),
    "xgroup-destroy": ("XGROUP", "DESTROY", KEYS.worker_stream("w1", "acks"), GROUP),
    "xdel-own-stream": ("XDEL", KEYS.worker_stream("w1", "acks"), "0-1"),
    # its registry hash, only as a hash
    "zadd-registry": ("ZADD", KEYS.worker("w1"), "1", "x"),
    "xadd-registry": ("XADD", KEYS.worker("w1"), "*", "m", "x"),
    "del-registry": ("DEL", KEYS.worker("w1")),
    # what it owns, read only
    "sadd-assignments": ("SADD", KEYS.worker_accounts("w1"), "acc-2"),
    "pexpire-assignments": ("PEXPIRE", KEYS.worker_accounts("w1"), "1"),
    "hset-own-account": ("HSET", KEYS.account("acc-1"), "worker_id", "w2"),
    "pexpire-own-account": ("PEXPIRE", KEYS.account("acc-1"), "1"),
    "pexpire-own-session": ("PEXPIRE", KEYS.session("acc-1"), "1"),
    "del-own-session": ("DEL", KEYS.session("acc-1")),
    # another worker's
    "read-other-account": ("HGETALL", KEYS.account("acc-2")),
    "read-other-session": ("HGETALL", KEYS.session("acc-2")),
    "read-other-assignments": ("SMEMBERS", KEYS.worker_accounts("w2")),
    "hset-other-registry": ("HSET", KEYS.worker("w2"), "tasks", "{}"),
    "xadd-other-stream-of-w2": ("XADD", KEYS.worker_stream("w2", "acks"), "*", "m", "x"),
}


async def _state(redis: Redis) -> dict[bytes, tuple[bytes, int]]:
    """Every key with its type and TTL."""
    keys = sorted(await redis.keys("*"))
    return {k: (await redis.type(k), await redis.pttl(k)) for k in keys}


@pytest.mark.parametrize("command", ATTACKS.values(), ids=ATTACKS.keys())
async def test_a_stolen_worker_credential_is_refused_and_changes_nothing(
    fleet: Fleet, command: tuple[str, ...]
) -> None:
    w1 = fleet.worker("w1")
    await WorkerRegistry(w1, KEYS).heartbeat(WorkerInfo(id="w1"), 30)
    await w1.hset(KEYS.session("acc-1"), "blob", "sealed")
    before = await _state(fleet.admin)
    try:
        with pytest.raises(rexc.NoPermissionError):
            await w1.execute_command(*command)
    finally:
        await w1.aclose()
    after = await _state(fleet.admin)
    # TTLs count down between the two looks: compare each key's type, and whether it
    # has a TTL at all
    assert {k: (t, ttl < 0) for k, (t, ttl) in after.items()} == {
        k: (t, ttl < 0) for k, (t, ttl) in before.items()
    }
    assert after[KEYS.workers.encode()] == (b"zset", -1)


# the rules `hiscrm acl render` wrote before selectors (an ACL file of an older release)
OLD_RULES = [
    "resetchannels",
    "&hiscrm:worker:w1:control",
    "-@all",
    *(f"+{c}" for c in ("auth", "hello", "ping", "multi", "exec", "hset", "pexpire", "zadd")),
    *(f"+{c}" for c in ("hgetall", "hget", "smembers", "xadd", "hsetnx", "hdel", "hincrby")),
    "resetkeys",
    "~hiscrm:worker:w1",
    "%W~hiscrm:workers",
    "%W~hiscrm:worker:w1:out:*",
    "%R~hiscrm:worker:w1:accounts",
]


async def test_the_grant_sync_upgrades_a_user_of_an_older_acl_file(fleet: Fleet) -> None:
    user = acl.worker_user("w1")
    await fleet.admin.execute_command(
        "ACL", "SETUSER", user, "reset", "on", f">{PASSWORDS['w1']}", *OLD_RULES
    )
    w1 = fleet.worker("w1")
    try:
        assert await w1.pexpire(KEYS.workers, 60_000)  # what the review found
        await fleet.admin.persist(KEYS.workers)
        # the Master's start: every worker user's keys rewritten
        assert await acl.Grants(fleet.admin, KEYS).sync_all() == 2
        for name in ("pexpire-index", "hset-under-out", "pexpire-own-stream"):
            with pytest.raises(rexc.NoPermissionError):
                await w1.execute_command(*ATTACKS[name])
        assert await w1.hget(KEYS.account("acc-1"), "id") == b"acc-1"
        await w1.zadd(KEYS.workers, {"w1": 2.0})
        await w1.xadd(KEYS.worker_stream("w1", "acks"), {"m": "x"})
    finally:
        await w1.aclose()
    shown = (await acl.rules_of(fleet.admin, [user]))[user]
    assert not [r for r in acl.split_rules(shown) if r.startswith(("~", "%"))]


async def test_grants_follow_a_move_and_never_refuse_a_read_meanwhile(fleet: Fleet) -> None:
    """acc-2 moves back and forth between w2 and w1, each move followed by the Master's
    sync, while w1 reads acc-1 without a pause: no read is refused."""
    grants = acl.Grants(fleet.admin, KEYS)
    store = AccountStore(fleet.admin, KEYS)
    w1 = fleet.worker("w1")
    reads = 0
    moved = anyio.Event()

    async def reader() -> None:
        nonlocal reads
        while not moved.is_set():
            assert await w1.hget(KEYS.account("acc-1"), "id") == b"acc-1"
            reads += 1

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            for i in range(40):
                owner = "w1" if i % 2 == 0 else "w2"
                await store.update("acc-2", {"worker_id": owner})
                assert await grants.sync(["w1", "w2"]) == 2
                if owner == "w1":
                    assert await w1.hget(KEYS.account("acc-2"), "id") == b"acc-2"
                else:
                    with pytest.raises(rexc.NoPermissionError):
                        await w1.hget(KEYS.account("acc-2"), "id")
            moved.set()
    finally:
        await w1.aclose()
    assert reads > 0
    refused = [e for e in await fleet.admin.acl_log() if e["object"] != KEYS.account("acc-2")]
    assert refused == []


async def _listed(redis: Redis, user: str) -> str:
    """The user's rules as ``ACL LIST`` has them (password hash included)."""
    head = f"user {user} "
    lines: list[str] = await redis.acl_list()
    return next(line.removeprefix(head) for line in lines if line.startswith(head))


async def test_rules_compare_equal_in_any_order_selectors_included(fleet: Fleet) -> None:
    """``acl show`` and the cluster restore compare ACL LIST lines, which Redis writes
    in an order of its own on each node."""
    user = acl.worker_user("w1")
    line = await _listed(fleet.admin, user)
    rules = acl.split_rules(line)
    selectors = [r for r in rules if r.startswith("(")]
    assert len(selectors) == 6 and all(r.endswith(")") for r in selectors)
    # the same rules given back in another order (as a restore copies them): the
    # selectors reversed, and the commands in each
    shuffled = [r for r in rules if not r.startswith("(")] + [
        "(" + " ".join(sorted(s[1:-1].split(), key=lambda w: (w[0] == "+", w[::-1]))) + ")"
        for s in reversed(selectors)
    ]
    await fleet.admin.execute_command("ACL", "SETUSER", user, "reset", *shuffled)
    again = await _listed(fleet.admin, user)
    assert again != line
    assert acl.same_rules(line.split(), again.split()), (line, again)
    # a read grant more is a difference
    await AccountStore(fleet.admin, KEYS).update("acc-2", {"worker_id": "w1"})
    await acl.Grants(fleet.admin, KEYS).sync(["w1"])
    moved = await _listed(fleet.admin, user)
    assert not acl.same_rules(line.split(), moved.split())
