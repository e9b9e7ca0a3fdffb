"""The seed's fix, made reliable: real master and worker processes on a real Redis."""

from __future__ import annotations

import json
import signal

import pytest

from hiscrm_bus.accounts import MISSING_USER_ID
from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e


def test_seed_scenario_login_hot_reloads_the_running_worker(stack: Stack) -> None:
    stack.master()
    w1 = stack.worker("w1")
    stack.add("acc-1")
    task = stack.wait_task("w1", "acc-1", "waiting_login")
    assert task["error"] == MISSING_USER_ID
    assert "Account missing platform_user_id" in stack.log("w1")

    result = stack.cli(
        "account",
        "login-success",
        "acc-1",
        "--platform-user-id",
        "1864722759",
        "--user-info",
        '{"nickname": "小王"}',
        "--wait",
        "--timeout",
        "10",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "applied: version 2 by worker w1" in result.stdout

    account = stack.account("acc-1")
    assert account["platform_user_id"] == "1864722759"
    assert account["login_status"] == "logged_in"
    assert json.loads(account["user_info"]) == {"nickname": "小王"}
    task = stack.wait_task("w1", "acc-1", "running", version=2)
    assert task["error"] is None
    wait_for(lambda: (stack.task("w1", "acc-1") or {}).get("crawls", 0) >= 2, what="crawls")
    # the same worker process, never restarted
    assert w1.poll() is None
    assert stack.r.hget(stack.keys.worker("w1"), "pid") == str(w1.pid)
    # the Master recorded the ACK
    login = [o for o in stack.outcomes() if o["reason"] == "login_success"]
    assert [(o["status"], o["worker_id"], o["version"]) for o in login] == [("applied", "w1", "2")]
    assert stack.r.zcard(stack.keys.pending()) == 0


def test_set_wait_reports_version_worker_outcome_and_latency(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1")
    result = stack.cli("account", "set", "acc-1", "monitor_interval_s=5", "name=shop", "--wait")
    assert result.returncode == 0, result.stderr
    assert "version 2" in result.stdout and "worker w1" in result.stdout
    assert "applied" in result.stdout and " ms" in result.stdout
    assert stack.account("acc-1")["monitor_interval_s"] == "5.0"


@pytest.mark.parametrize(
    "change", ["monitor_interval_s=fast", "monitor_interval_s=-1", "colour=blue", "id=x"]
)
def test_bad_value_from_the_cli_is_refused_and_nothing_written(stack: Stack, change: str) -> None:
    stack.add("acc-1")
    before = stack.account("acc-1")
    result = stack.cli("account", "set", "acc-1", change, "--wait", "--timeout", "1")
    assert result.returncode == 2
    assert "error" in result.stderr
    assert stack.account("acc-1") == before


def test_unreachable_redis_is_one_sentence_and_exit_2(stack: Stack) -> None:
    stack.redis_url = "redis://127.0.0.1:1/0"
    result = stack.cli("account", "list")
    assert result.returncode == 2
    assert "Cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr


def test_killed_pubsub_connection_still_gets_the_update(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    killed = stack.r.client_kill_filter(_type="pubsub")
    assert killed >= 1
    result = stack.cli("account", "login-success", "acc-1", "--platform-user-id", "u-1", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    stack.wait_task("w1", "acc-1", "running", version=2)


def test_worker_sigkilled_misses_three_updates_then_converges(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1")
    stack.cli("account", "login-success", "acc-1", "--platform-user-id", "u-1", "--wait")
    stack.wait_task("w1", "acc-1", "running", version=2)
    stack.kill("w1")
    for interval in ("7", "8", "9"):
        stack.cli("account", "set", "acc-1", f"monitor_interval_s={interval}", check=True)
    assert stack.account("acc-1")["config_version"] == "5"
    stack.worker("w1")
    stack.wait_task("w1", "acc-1", "running", version=5)
    wait_for(lambda: stack.r.zcard(stack.keys.pending()) == 0, what="pending resolved")
    admin = [o for o in stack.outcomes() if o["reason"] == "admin_update"]
    assert sorted(o["version"] for o in admin) == ["3", "4", "5"]
    assert {o["status"] for o in admin} == {"applied"}


def test_master_sigkilled_with_updates_pending_loses_none(stack: Stack) -> None:
    stack.master()
    w1 = stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    w1.send_signal(signal.SIGSTOP)  # the worker hears nothing while frozen
    for name in ("a", "b", "c"):
        stack.cli("account", "set", "acc-1", f"name={name}", check=True)
    assert stack.r.zcard(stack.keys.pending()) == 3
    stack.kill("m1")
    w1.send_signal(signal.SIGCONT)  # it reconciles or gets retries; ACKs wait in the stream
    stack.master()
    wait_for(lambda: stack.r.zcard(stack.keys.pending()) == 0, timeout=30, what="pending resolved")
    admin = [o for o in stack.outcomes() if o["reason"] == "admin_update"]
    assert sorted(o["version"] for o in admin) == ["2", "3", "4"]
    assert {o["status"] for o in admin} == {"applied"}
    assert stack.task("w1", "acc-1")["applied_version"] == 4


def test_invalid_value_behind_the_cli_is_rejected_and_old_config_kept(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.observe("w1", "acks")  # read below, after the Master has handled them
    stack.add("acc-1")
    stack.cli("account", "login-success", "acc-1", "--platform-user-id", "u-1", "--wait")
    stack.wait_task("w1", "acc-1", "running", version=2)
    # a buggy tool writes the hash directly and bumps the version, then a valid-looking
    # update announces it
    key = stack.keys.account("acc-1")
    stack.r.hset(key, "monitor_interval_s", "soon")
    stack.r.hincrby(key, "config_version", 1)
    result = stack.cli("account", "set", "acc-1", "name=after", "--wait")
    # the CLI itself refuses to build on an invalid stored config
    assert result.returncode != 0
    stack.r.hset(key, "monitor_interval_s", "soon")
    stack.r.publish(
        stack.keys.control("w1"),
        json.dumps(
            {
                "type": "master:account:config_update",
                "sender": "tool",
                "update_id": "u-bad",
                "account_id": "acc-1",
                "config_version": 3,
                "reason": "admin_update",
            }
        ),
    )
    ack = wait_for(lambda: _ack_for(stack, "u-bad"), what="rejected ACK")
    assert ack["ok"] is False
    assert "monitor_interval_s" in ack["error"]
    assert ack["applied_version"] == 2
    task = stack.wait_task("w1", "acc-1", "running", version=2)
    assert task["applied_version"] == 2


def _ack_for(stack: Stack, update_id: str) -> dict[str, object] | None:
    for _id, fields in stack.r.xrange(stack.keys.worker_stream("w1", "acks")):
        ack = json.loads(fields["msg"])
        if ack.get("update_id") == update_id:
            return ack  # type: ignore[no-any-return]
    return None


def test_garbage_everywhere_is_dead_lettered_and_both_processes_live_on(stack: Stack) -> None:
    master = stack.master()
    worker = stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    stack.r.publish(stack.keys.control("w1"), b"\xff\xfe not json")
    stack.r.xadd(
        stack.keys.worker_stream("w1", "acks"),
        {"msg": '{"type": "master:account:config_update:ack"}'},
    )
    stack.r.xadd(stack.keys.worker_stream("w1", "events"), {"junk": "no msg field"})
    counts = wait_for(
        lambda: (c := stack.r.hgetall(stack.keys.deadletter_counts)) and len(c) == 3 and c,
        what="three dead letters",
    )
    assert counts == {
        stack.keys.control("w1"): "1",
        stack.keys.worker_stream("w1", "acks"): "1",
        stack.keys.worker_stream("w1", "events"): "1",
    }
    reasons = [f["reason"] for _id, f in stack.r.xrange(stack.keys.deadletter)]
    assert all(reasons)
    result = stack.cli("account", "login-success", "acc-1", "--platform-user-id", "u", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert master.poll() is None and worker.poll() is None


def test_dead_worker_accounts_move_to_a_live_worker(stack: Stack) -> None:
    stack.extra_env["HISCRM_HEARTBEAT_TTL_S"] = "1"
    stack.master()
    stack.worker("w1")
    stack.add("acc-1")
    stack.cli("account", "login-success", "acc-1", "--platform-user-id", "u", "--wait")
    stack.wait_task("w1", "acc-1", "running")
    stack.worker("w2")
    stack.kill("w1")
    wait_for(lambda: stack.account("acc-1").get("worker_id") == "w2", what="failover to w2")
    stack.wait_task("w2", "acc-1", "running")
    failover = [o for o in stack.outcomes() if o["reason"] == "failover"]
    assert [(o["status"], o["worker_id"]) for o in failover] == [("applied", "w2")]
    assert "1 worker(s) offline (heartbeat expired): w1" in stack.log("m1")


def test_unassigned_account_gets_a_worker_and_reassignment_moves_the_task(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.cli("account", "add", "acc-1", "--platform", "synthetic", check=True)
    wait_for(lambda: stack.account("acc-1").get("worker_id") == "w1", what="assignment")
    stack.wait_task("w1", "acc-1", "waiting_login")
    stack.worker("w2")
    result = stack.cli("account", "set", "acc-1", "worker_id=w2", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    stack.wait_task("w2", "acc-1", "waiting_login")
    wait_for(lambda: stack.task("w1", "acc-1") is None, what="task gone from w1")


def test_enable_disable_and_interval_take_hold_at_once(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1", interval="3600")
    stack.cli("account", "login-success", "acc-1", "--platform-user-id", "u", "--wait")
    stack.wait_task("w1", "acc-1", "running", version=2)
    crawls = stack.task("w1", "acc-1")["crawls"]
    # a task sleeping for an hour wakes for a shorter interval
    stack.cli("account", "set", "acc-1", "monitor_interval_s=0.1", "--wait", check=True)
    wait_for(lambda: stack.task("w1", "acc-1")["crawls"] >= crawls + 3, what="faster crawls")
    stack.cli("account", "set", "acc-1", "enabled=false", "--wait", check=True)
    stack.wait_task("w1", "acc-1", "disabled")
    stack.cli("account", "set", "acc-1", "enabled=true", "--wait", check=True)
    stack.wait_task("w1", "acc-1", "running", version=5)


def test_fleet_wide_set_tallies_per_worker(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.worker("w2")
    for i in range(6):
        stack.add(f"acc-{i}", worker="w1" if i % 2 else "w2")
    result = stack.cli("account", "set", "--all", "crawl_dms=false", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6/6 outcomes" in result.stdout
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if "│ w" in line}
    assert set(lines) == {"w1", "w2"}
    result = stack.cli("account", "set", "--worker", "w1", "monitor_interval_s=9", "--wait")
    assert result.returncode == 0
    assert "3/3 outcomes" in result.stdout
    assert all(stack.account(f"acc-{i}")["monitor_interval_s"] == "9.0" for i in range(1, 6, 2))


def test_two_masters_share_the_work_without_loss_or_double_retry(stack: Stack) -> None:
    stack.master("m1")
    stack.master("m2")
    stack.worker("w1")
    for i in range(10):
        stack.add(f"acc-{i}")
    for round_ in range(3):
        result = stack.cli("account", "set", "--all", f"name=r{round_}", "--wait")
        assert result.returncode == 0, result.stdout + result.stderr
    outcomes = [o for o in stack.outcomes() if o["reason"] == "admin_update"]
    ids = [o["update_id"] for o in outcomes]
    assert len(ids) == 30 and len(set(ids)) == 30
    assert {o["status"] for o in outcomes} == {"applied"}
    assert stack.r.zcard(stack.keys.pending()) == 0


def test_sigterm_stops_the_worker_cleanly(stack: Stack) -> None:
    stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    proc = stack.procs["w1"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == 0
    assert "worker w1 stopped" in stack.log("w1")


def test_removed_account_stops_its_task(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1")
    stack.add("acc-2")
    stack.wait_task("w1", "acc-1", "waiting_login")
    result = stack.cli("account", "remove", "acc-1")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: stack.task("w1", "acc-1") is None, what="task stopped")
    assert stack.task("w1", "acc-2") is not None
    assert "acc-1" not in stack.cli("account", "list").stdout
    assert stack.cli("account", "remove", "acc-1").returncode == 1


@pytest.mark.parametrize(
    "args",
    [
        ["account", "add", "x", "--platform", "Not A Platform"],
        ["account", "add", "x", "--platform", "sandbox", "--interval", "-5"],
        ["account", "add", "bad id!", "--platform", "sandbox"],
        ["account", "set", "name=x"],
        ["account", "set", "acc-1", "--all", "name=x"],
        ["account", "set", "acc-1"],
        ["account", "set", "acc-1", "justaword"],
        ["account", "login-success", "acc-1", "--platform-user-id", "u", "--user-info", "[1]"],
        ["data", "acc-1", "--kind", "likes"],
        ["login", "acc-1", "--timeout", "0"],
        ["--log-level", "loud", "account", "list"],
    ],
)
def test_bad_cli_input_is_exit_2_with_one_clear_message(stack: Stack, args: list[str]) -> None:
    stack.add("acc-1")
    before = stack.account("acc-1")
    result = stack.cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()
    assert stack.account("acc-1") == before
    assert not stack.r.exists(stack.keys.account("x"))
