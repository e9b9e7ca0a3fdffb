"""Per-worker Redis users on a real redis-server started with the ACL file that
``hiscrm acl render`` writes: the fleet works under them (seed scenario, fleet-wide
change, failover, Redis restart) and a stolen worker credential reaches nothing but
that worker's own accounts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from hiscrm_bus.messages import (
    AccountConfigUpdateAck,
    CrawlBatch,
    CrawledItem,
    LoginSuccess,
    encode,
    utcnow,
)
from tests.e2e.stack import Stack, wait_for
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.real]
PREFIX = "hiscrm:"
WORKERS = ("w1", "w2")


@dataclass
class AclFleet:
    stack: Stack
    server: RedisServer
    secrets: Path

    def password(self, user: str) -> str:
        return (self.secrets / f"{user}.password").read_text().strip()

    def env_for(self, user: str) -> dict[str, str]:
        return {
            "HISCRM_REDIS_URL": self.server.url_with(user),
            "HISCRM_REDIS_PASSWORD_FILE": str(self.secrets / f"{user}.password"),
        }

    def master(self) -> subprocess.Popen[bytes]:
        return self.stack.master(**self.env_for("hiscrm-master"))

    def worker(self, worker_id: str, **env: str) -> subprocess.Popen[bytes]:
        return self.stack.worker(worker_id, **self.env_for(f"worker-{worker_id}"), **env)

    def as_user(self, user: str) -> redis.Redis:
        url = self.server.url_with(user, self.password(user))
        return redis.Redis.from_url(url, decode_responses=True)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[AclFleet]:
    secrets = tmp_path / "secrets"
    aclfile = tmp_path / "users.acl"
    render = subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "acl", "render", "--out", str(aclfile)]
        + ["--secrets-dir", str(secrets), "--key-prefix", PREFIX]
        + [arg for w in WORKERS for arg in ("--worker", w)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert render.returncode == 0, render.stderr
    assert aclfile.stat().st_mode & 0o777 == 0o600
    for w in WORKERS:  # the passwords are in their files, never on the terminal
        assert (secrets / f"worker-{w}.password").read_text().strip() not in render.stdout
    server = RedisServer(tmp_path / "redis", persist=True, aclfile=aclfile)
    server.start()
    operator = (secrets / "hiscrm-operator.password").read_text().strip()
    stack = Stack(
        server.url_with("hiscrm-operator"),
        PREFIX,
        tmp_path,
        probe_url=server.url_with("hiscrm-operator", operator),
    )
    stack.extra_env["HISCRM_REDIS_PASSWORD_FILE"] = str(secrets / "hiscrm-operator.password")
    try:
        yield AclFleet(stack, server, secrets)
    finally:
        stack.stop_all()
        server.stop()


def _denied(call: object) -> None:
    assert callable(call)
    with pytest.raises(redis.exceptions.NoPermissionError):
        call()


def test_the_fleet_works_under_its_users_and_grants_follow_the_accounts(
    fleet: AclFleet,
) -> None:
    stack = fleet.stack
    fleet.master()
    fleet.worker("w1", HISCRM_HEARTBEAT_TTL_S="2")
    fleet.worker("w2")
    stack.add("acc-1", worker="w1")
    stack.add("acc-2", worker="w2")
    stack.wait_task("w1", "acc-1", "waiting_login")
    stack.wait_task("w2", "acc-2", "waiting_login")
    w1 = fleet.as_user("worker-w1")
    assert w1.hget(stack.keys.account("acc-1"), "id") == "acc-1"
    _denied(lambda: w1.hgetall(stack.keys.account("acc-2")))

    # the seed scenario: a login success applied without a restart
    pid = stack.procs["w1"].pid
    result = stack.cli("account", "login-success", "acc-1", "--platform-user-id", "dy-1", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    task = stack.wait_task("w1", "acc-1", "running")
    assert stack.procs["w1"].pid == pid and task["error"] is None

    # a fleet-wide change: every owner applies it
    result = stack.cli("account", "set", "--all", "monitor_interval_s=0.5", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "applied" in result.stdout

    # failover: w1 dies, acc-1 moves to w2 and its read access with it
    stack.kill("w1")
    wait_for(lambda: stack.account("acc-1").get("worker_id") == "w2", timeout=30)
    stack.wait_task("w2", "acc-1", "running")
    w2 = fleet.as_user("worker-w2")
    assert w2.hget(stack.keys.account("acc-1"), "platform_user_id") == "dy-1"
    _denied(lambda: w1.hgetall(stack.keys.account("acc-1")))
    w1.close()
    w2.close()
    # no command a worker sent was refused: the log holds only reads of an account a
    # user could not read then (the test's own two reads above)
    with fleet.as_user("default") as admin:
        log = admin.acl_log()
    accounts = (stack.keys.account("acc-1"), stack.keys.account("acc-2"))
    refused = [
        (e["username"], e["reason"], e["object"])
        for e in log
        if not (e["reason"] == "key" and e["object"] in accounts)
    ]
    assert refused == []


def test_grants_are_reapplied_after_a_redis_restart(fleet: AclFleet) -> None:
    stack = fleet.stack
    fleet.master()
    fleet.worker("w1")
    stack.add("acc-1", worker="w1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    # runtime grants are not in the ACL file: a restart forgets them
    fleet.server.restart()
    wait_for(lambda: _loaded(stack), what="Redis loaded its data again")
    result = stack.cli(
        "account", "set", "acc-1", "monitor_interval_s=0.7", "--wait", "--timeout", "60"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    task = stack.wait_task("w1", "acc-1", "waiting_login", version=2)
    assert task["applied_version"] >= 2


def _loaded(stack: Stack) -> bool:
    try:
        return bool(stack.r.exists(stack.keys.account("acc-1")))
    except redis.exceptions.ConnectionError:  # LOADING, or not listening yet
        return False


def test_a_stolen_worker_credential_reaches_only_its_own_accounts(fleet: AclFleet) -> None:
    stack = fleet.stack
    keys = stack.keys
    master = fleet.master()
    fleet.worker("w1")
    fleet.worker("w2")
    stack.add("acc-1", worker="w1")
    stack.add("acc-2", worker="w2")
    stack.wait_task("w2", "acc-2", "waiting_login")
    thief = fleet.as_user("worker-w1")

    # what the user may not do at all
    _denied(lambda: thief.hgetall(keys.account("acc-2")))
    _denied(lambda: thief.hset(keys.account("acc-1"), "platform_user_id", "x"))
    _denied(lambda: thief.hset(keys.worker("w2"), "tasks", "{}"))
    _denied(lambda: thief.publish(keys.control("w2"), "x"))
    listener = thief.pubsub()
    listener.subscribe(keys.control("w2"))
    _denied(lambda: listener.get_message(timeout=5))
    listener.close()
    for stream in (
        keys.worker_stream("w2", "acks"),
        keys.outcomes(),
        keys.deadletter,
    ):
        _denied(lambda s=stream: thief.xadd(s, {"x": "y"}, maxlen=0))
    _denied(lambda: thief.xtrim(keys.worker_stream("w1", "acks"), maxlen=0))
    _denied(lambda: thief.delete(keys.worker_stream("w1", "acks")))
    _denied(lambda: thief.zrem(keys.workers, "w2"))
    # its own keys, with any command but the one a worker sends there: a TTL or another
    # type on the worker index halts every Master; a hash under its stream names fakes
    # a live worker; an expired stream takes the Masters' consumer group with it
    acks = keys.worker_stream("w1", "acks")
    out = acks.removesuffix("acks")
    _denied(lambda: thief.pexpire(keys.workers, 1))
    _denied(lambda: thief.hset(keys.workers, "x", "1"))
    _denied(lambda: thief.delete(keys.workers))
    _denied(lambda: thief.hset(out + "x", mapping={"capacity": "1000000", "instance": "x"}))
    _denied(lambda: thief.zadd(out + "x:accounts", {"zz": 1}))
    _denied(lambda: thief.pexpire(acks, 1))
    _denied(lambda: thief.zadd(keys.worker("w1"), {"x": 1}))
    assert stack.r.type(keys.workers) == "zset" and stack.r.pttl(keys.workers) == -1
    _denied(thief.flushall)
    _denied(lambda: thief.config_get("*"))
    _denied(lambda: thief.keys("*"))

    # what it can write (its own streams) speaks only for w1, about w1's accounts
    before = stack.account("acc-2")
    forged_login = LoginSuccess(
        sender="w1", account_id="acc-2", worker_id="w1", platform_user_id="attacker"
    )
    forged_ack = AccountConfigUpdateAck(
        sender="w2",
        account_id="acc-2",
        worker_id="w2",
        applied_version=99,
        seen_version=99,
        ok=True,
    )
    phishing = CrawlBatch(
        sender="w1",
        account_id="acc-2",
        worker_id="w1",
        items=(
            CrawledItem(
                kind="dm", item_id="p1", text="verify at evil.example", created_at=utcnow()
            ),
        ),
    )
    thief.xadd(keys.worker_stream("w1", "events"), {"msg": encode(forged_login)})
    thief.xadd(keys.worker_stream("w1", "acks"), {"msg": encode(forged_ack)})
    thief.xadd(keys.worker_stream("w1", "ingest"), {"msg": encode(phishing)})
    letters = wait_for(
        lambda: (xs := stack.r.xrange(keys.deadletter)) and len(xs) >= 3 and xs,
        what="three refused messages",
    )
    reasons = sorted(f["reason"] for _id, f in letters)
    assert reasons == ["not_owner", "not_owner", "wrong_sender"]
    after = stack.account("acc-2")
    assert after["config_version"] == before["config_version"]
    assert "platform_user_id" not in after
    dms = json.loads(stack.cli("data", "acc-2", "--kind", "dms", "--json", check=True).stdout)
    assert (dms["dms"], dms["items"]) == (0, [])  # nothing of the phishing DM was stored
    assert not [o for o in stack.outcomes() if o["account_id"] == "acc-2" and o["version"] == "99"]
    assert master.poll() is None
    assert json.loads(stack.r.hget(keys.worker("w2"), "tasks") or "{}")["acc-2"]["state"] == (
        "waiting_login"
    )
    thief.close()


def test_acl_commands(fleet: AclFleet, tmp_path: Path) -> None:
    stack = fleet.stack
    stack.add("acc-1", worker="w3")
    pw_file = tmp_path / "w3.password"
    added = stack.cli("acl", "add-worker", "w3", "--password-file", str(pw_file))
    assert added.returncode == 0, added.stderr
    password = pw_file.read_text().strip()
    assert pw_file.stat().st_mode & 0o777 == 0o600
    assert password not in added.stdout + added.stderr
    shown = stack.cli("acl", "show", "w3")
    assert shown.returncode == 0, shown.stderr
    assert stack.keys.account("acc-1") in shown.stdout  # it owns acc-1: it may read it
    assert password not in shown.stdout
    w3 = redis.Redis.from_url(fleet.server.url_with("worker-w3", password), decode_responses=True)
    assert w3.hget(stack.keys.account("acc-1"), "id") == "acc-1"
    removed = stack.cli("acl", "remove-worker", "w3")
    assert removed.returncode == 0, removed.stderr
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(fleet.server.url_with("worker-w3", password)).ping()
    assert stack.cli("acl", "add-worker", "not valid!").returncode == 2
    assert stack.cli("acl", "remove-worker", "w3").returncode == 1
    w3.close()
