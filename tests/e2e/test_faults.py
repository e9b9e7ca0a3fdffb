"""Faults around the delivery guarantee: retries that end in failure, Redis restarts,
and a mixed fault run (short here, long under `make soak`)."""

from __future__ import annotations

import json
import os
import random
import signal

import pytest

from tests.e2e.stack import Stack, wait_for
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e


def test_unacked_update_is_retried_then_failed_and_marked_stale(stack: Stack) -> None:
    stack.extra_env.update(HISCRM_ACK_TIMEOUT_S="0.2", HISCRM_MAX_ATTEMPTS="2")
    stack.master()
    w1 = stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    w1.send_signal(signal.SIGSTOP)
    result = stack.cli("account", "set", "acc-1", "name=x", "--wait", "--timeout", "20")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout and "attempts 2" in result.stdout
    assert stack.account("acc-1")["config_stale"] == "true"
    assert int(stack.r.hget(stack.keys.stats(), "retried")) >= 1
    assert "account marked config_stale" in stack.log("m1")
    doc = json.loads(stack.cli("diagnose", "acc-1", "--json").stdout)
    (account,) = doc["accounts"]
    assert "config_stale" in [p["code"] for p in account["problems"]]
    (failed,) = account["unsuccessful_updates"]
    assert (failed["status"], failed["attempts"]) == ("failed", 2)
    # the worker comes back, catches up, and the next update clears the stale mark
    w1.send_signal(signal.SIGCONT)
    result = stack.cli("account", "set", "acc-1", "name=y", "--wait", "--timeout", "20")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_for(lambda: "config_stale" not in stack.account("acc-1"), what="stale cleared")


def test_redis_restart_loses_no_update(own_stack: Stack, own_redis_server: RedisServer) -> None:
    stack = own_stack
    master = stack.master()
    worker = stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    own_redis_server.restart()  # every connection drops; data survives (AOF)
    result = stack.cli(
        "account",
        "login-success",
        "acc-1",
        "--platform-user-id",
        "u-1",
        "--wait",
        "--timeout",
        "30",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    stack.wait_task("w1", "acc-1", "running", version=2)
    assert master.poll() is None and worker.poll() is None
    assert "control subscription" in stack.log("w1")
    assert "recovered after" in stack.log("w1")


def _fault_run(stack: Stack, rounds: int, seed: int) -> None:
    """Updates interleaved with random faults; in the end every update has exactly one
    outcome and the worker runs the newest version of every account."""
    rng = random.Random(seed)
    stack.master("m1")
    stack.master("m2")
    stack.worker("w1")
    accounts = [f"acc-{i}" for i in range(5)]
    for a in accounts:
        stack.add(a)
    for n in range(rounds):
        fault = rng.choice(["none", "kill-pubsub", "kill-worker", "kill-master", "stop-worker"])
        if fault == "kill-pubsub":
            stack.r.client_kill_filter(_type="pubsub")
        elif fault == "kill-worker":
            stack.kill("w1")
        elif fault == "kill-master":
            stack.kill(rng.choice(["m1", "m2"]))
        elif fault == "stop-worker":
            stack.procs["w1"].send_signal(signal.SIGSTOP)
        for a in rng.sample(accounts, 2):
            stack.cli("account", "set", a, f"name=r{n}", check=True)
        if fault == "kill-worker":
            stack.worker("w1")
        elif fault == "kill-master":
            for name in ("m1", "m2"):
                if stack.procs[name].poll() is not None:
                    stack.master(name)
        elif fault == "stop-worker":
            stack.procs["w1"].send_signal(signal.SIGCONT)
    wait_for(lambda: stack.r.zcard(stack.keys.pending()) == 0, timeout=60, what="all resolved")
    outcomes = [o for o in stack.outcomes() if o["reason"] == "admin_update"]
    ids = [o["update_id"] for o in outcomes]
    assert len(ids) == 2 * rounds and len(set(ids)) == len(ids)
    assert {o["status"] for o in outcomes} == {"applied"}
    for a in accounts:
        version = int(stack.account(a)["config_version"])
        stack.wait_task("w1", a, "waiting_login", version=version)


def test_fault_run_short(stack: Stack) -> None:
    _fault_run(stack, rounds=6, seed=7)


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_fault_run_long(stack: Stack) -> None:
    _fault_run(stack, rounds=int(os.environ.get("HISCRM_SOAK_ROUNDS", "60")), seed=11)
