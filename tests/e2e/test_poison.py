"""Nothing stored in Redis takes a process down (issue 8, findings 1 and 2), with real
master and worker processes on a real redis-server: a poisoned account value is that
account's problem, a full or paused Redis is waited out, and every update still ends
applied once Redis takes writes again."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e
DEEP = '{"a":' * 10_000 + "1" + "}" * 10_000


def _alive(stack: Stack) -> None:
    for name, proc in stack.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{stack.log(name)}"


def _rejected_acks(stack: Stack, worker: str, account: str) -> list[dict[str, object]]:
    """The worker's rejecting ACKs about ``account``, sent alone or in a reconcile's batch."""
    acks: list[dict[str, object]] = []
    for _id, f in stack.r.xrange(stack.keys.worker_stream(worker, "acks")):  # observed
        message = json.loads(f["msg"])
        acks += message["acks"] if message["type"].endswith(":acks") else [message]
    return [a for a in acks if a["account_id"] == account and a["ok"] is False]


def test_a_poisoned_account_is_its_own_problem_and_the_fleet_lives_on(stack: Stack) -> None:
    master = stack.master()
    stack.worker("w1", HISCRM_HEARTBEAT_TTL_S="2", HISCRM_RECONCILE_INTERVAL_S="0.5")
    stack.observe("w1", "acks")
    stack.add("acc-1")
    stack.add("acc-2")
    stack.wait_task("w1", "acc-1", "waiting_login")
    stack.wait_task("w1", "acc-2", "waiting_login")
    key = stack.keys.account("acc-2")

    # finding 1: a user_info nested 10,000 levels deep, written behind our back
    stack.r.hset(key, "user_info", DEEP)
    stack.r.hincrby(key, "config_version", 1)
    (ack,) = wait_for(lambda: _rejected_acks(stack, "w1", "acc-2"), what="a rejected ACK")
    assert "user_info" in str(ack["error"]) and "nested deeper than 32" in str(ack["error"])
    # an invalid value over 2 KB: the reject's reason stays within its bound
    stack.r.hset(key, "name", "x" * 5000)
    stack.r.hincrby(key, "config_version", 1)
    wait_for(lambda: len(_rejected_acks(stack, "w1", "acc-2")) >= 2, what="a second reject")
    assert all(len(str(a["error"])) <= 2000 for a in _rejected_acks(stack, "w1", "acc-2"))
    task = stack.task("w1", "acc-2")
    assert task is not None and task["applied_version"] == 1  # the last good config runs
    _alive(stack)

    # the operator sees which account and which field
    doc = json.loads(stack.cli("diagnose", "acc-2", "--json").stdout)
    (view,) = doc["accounts"]
    problem = next(p for p in view["problems"] if p["code"] == "invalid_config")
    assert "user_info" in problem["message"] and "name" in problem["message"]
    # a bad value from the CLI is refused whole: exit 2, nothing written
    version = stack.account("acc-1")["config_version"]
    for bad in (f"user_info={DEEP}", "name=" + "y" * 300, 'user_info={"a":"' + "z" * 70_000 + '"}'):
        result = stack.cli("account", "set", "acc-1", bad)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr) < 2000
    assert stack.account("acc-1")["config_version"] == version

    # its worker dies: the Master places what it can and survives the poisoned one
    stack.worker("w2")
    stack.kill("w1")
    wait_for(lambda: stack.account("acc-1").get("worker_id") == "w2", timeout=30)
    stack.wait_task("w2", "acc-1", "waiting_login")
    assert master.poll() is None
    # repaired, the account follows
    result = stack.cli("account", "set", "acc-2", "user_info={}", "name=shop", "--wait")
    assert result.returncode in (0, 3), result.stdout + result.stderr  # its owner is dead
    wait_for(lambda: stack.account("acc-2").get("worker_id") == "w2", timeout=30)
    stack.wait_task("w2", "acc-2", "waiting_login")
    assert master.poll() is None


def test_a_full_then_paused_redis_is_waited_out_and_every_update_applies(stack: Stack) -> None:
    """Finding 2 and the fault run: Redis refuses writes (maxmemory, noeviction) for
    6 s, then is paused, mid-workload. No process exits; every update ends applied."""
    stack.master()
    worker = stack.worker("w1")
    accounts = [f"acc-{i}" for i in range(4)]
    for a in accounts:
        stack.add(a)
    for a in accounts:
        stack.wait_task("w1", a, "waiting_login")
    admin = stack.r
    # the updates are in flight when Redis fills up: the worker holds them unread
    worker.send_signal(signal.SIGSTOP)
    result = stack.cli("account", "set", "--all", "name=during-oom")
    assert result.returncode == 0, result.stdout + result.stderr
    admin.config_set("maxmemory", 1)
    try:
        assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        worker.send_signal(signal.SIGCONT)
        refused = stack.cli("account", "set", "acc-0", "name=refused")
        assert refused.returncode == 2 and "OOM" in refused.stderr, refused.stderr
        time.sleep(6)  # the outage itself: how long Redis stays full is the scenario
        _alive(stack)
    finally:
        admin.config_set("maxmemory", 0)
    admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")
    _alive(stack)

    def all_applied() -> bool:
        applied = {
            o["account_id"]
            for o in stack.outcomes()
            if o["status"] == "applied" and o["version"] == "2"
        }
        return applied == set(accounts)

    wait_for(all_applied, timeout=60, what="every update applied after the outage")
    assert not [o for o in stack.outcomes() if o["status"] != "applied"]
    for a in accounts:
        stack.wait_task("w1", a, "waiting_login", version=2)
    _alive(stack)
    # one line when a loop's outage starts and one when it ends, not one per retry
    for name in ("m1", "w1"):
        lines = [ln for ln in stack.log(name).splitlines() if "OOM" in ln]
        assert len(lines) <= 12, "\n".join(lines)
