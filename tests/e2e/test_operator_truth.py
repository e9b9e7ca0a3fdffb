"""`hiscrm diagnose` never cries wolf on a healthy fleet (issue 15, finding 1), and
still finds what is really wrong; real master and worker processes."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e


def _logged_in(stack: Stack, account_id: str) -> None:
    result = stack.cli(
        "account", "login-success", account_id, "--platform-user-id", "u-1", "--wait"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    stack.wait_task("w1", account_id, "running")


def test_set_wait_then_diagnose_is_green_every_time_and_an_idle_stack_stays_green(
    stack: Stack,
) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1", interval="5")
    _logged_in(stack, "acc-1")
    for n in range(8):  # each pair is two CLI processes: 8 found the old false alarms
        result = stack.cli("account", "set", "acc-1", f"monitor_interval_s={5 + n}", "--wait")
        assert result.returncode == 0 and "applied" in result.stdout, result.stdout
        seen = stack.cli("diagnose")
        assert seen.returncode == 0, f"pair {n}: {seen.stdout}{seen.stderr}"
    # idle for longer than a Master's liveness window (15 passes, at least 3 s here):
    # a running Master is still seen
    time.sleep(4)  # the idleness is the scenario, there is nothing to wait on
    seen = stack.cli("diagnose")
    assert seen.returncode == 0, seen.stdout + seen.stderr


def test_a_given_up_update_stops_being_stale_once_the_worker_catches_up(stack: Stack) -> None:
    stack.extra_env.update(HISCRM_ACK_TIMEOUT_S="0.2", HISCRM_MAX_ATTEMPTS="2")
    stack.master()
    w1 = stack.worker("w1", HISCRM_RECONCILE_INTERVAL_S="0.5")
    stack.add("acc-1", interval="5")
    _logged_in(stack, "acc-1")
    w1.send_signal(signal.SIGSTOP)
    result = stack.cli("account", "set", "acc-1", "name=x", "--wait", "--timeout", "20")
    assert result.returncode == 1 and "failed" in result.stdout, result.stdout
    doc = json.loads(stack.cli("diagnose", "acc-1", "--json").stdout)
    assert "config_stale" in [p["code"] for p in doc["accounts"][0]["problems"]]
    # a real problem is still found: the worker is frozen and behind
    w1.send_signal(signal.SIGCONT)
    # no further change is sent: the worker reconciles, ACKs, and that clears the mark
    wait_for(lambda: "config_stale" not in stack.account("acc-1"), what="stale mark cleared")
    stack.wait_task("w1", "acc-1", "running", version=int(stack.account("acc-1")["config_version"]))
    seen = stack.cli("diagnose")
    assert seen.returncode == 0, seen.stdout + seen.stderr


def test_a_stopped_master_is_found(stack: Stack) -> None:
    master = stack.master()
    stack.worker("w1")
    stack.add("acc-1", interval="5")
    _logged_in(stack, "acc-1")
    master.send_signal(signal.SIGSTOP)
    try:
        # diagnose tells a Master that stopped passing from an idle one
        def flagged() -> bool:
            doc = json.loads(stack.cli("diagnose", "--json").stdout)
            return "no_master" in [p["code"] for p in doc["problems"]]

        wait_for(flagged, timeout=40, what="no_master reported")
    finally:
        master.send_signal(signal.SIGCONT)


def test_a_worker_id_is_held_by_one_process_at_a_time(stack: Stack) -> None:
    first = stack.worker("w1")
    second = stack.cli("worker", "--id", "w1")
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"pid {first.pid}" in second.stderr and "in use by host" in second.stderr
    assert first.poll() is None
    # a clean stop gives the id up at once; a crash's is taken over on the same host
    stack.kill("w1", signal.SIGTERM)
    assert first.returncode == 0
    stack.worker("w1")
    stack.kill("w1", signal.SIGKILL)
    stack.worker("w1")


def test_delivery_timing_is_the_masters_and_a_lasting_condition_is_logged_once(
    stack: Stack,
) -> None:
    stack.master()  # FAST_ENV: ACK deadline 1 s
    stack.add("acc-1", worker=None)  # no worker runs: the Master cannot place it
    w1 = stack.worker("w1", HISCRM_CAPACITY="0")
    first = stack.r.zscore(stack.keys.masters, "m1")
    assert first is not None
    wait_for(
        lambda: (stack.r.zscore(stack.keys.masters, "m1") or 0) > first + 2,
        what="ten passes of the Master",
    )
    log = stack.log("m1")
    assert log.count("account acc-1: no live worker with room") == 1, log
    # whoever writes an update, the Master's deadline applies
    stack.kill("w1", signal.SIGTERM)
    assert w1.returncode == 0
    stack.worker("w2")
    stack.extra_env["HISCRM_ACK_TIMEOUT_S"] = "30"  # the CLI's own, different setting
    result = stack.cli("account", "set", "acc-1", "worker_id=w2", "name=x")
    assert result.returncode == 0, result.stderr
    records = [stack.r.hgetall(k) for k in stack.r.scan_iter(stack.keys.update("*"))]
    assert records
    for record in records:
        first_deadline = int(record["deadline_ms"]) - int(record["created_at_ms"])
        assert first_deadline == 1000 or int(record["attempts"]) > 1, record
