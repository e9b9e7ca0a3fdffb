"""What an operator uses: diagnose on a live fleet, and the Master's metrics."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.e2e.stack import Stack, wait_for
from tests.redis_server import free_port

pytestmark = pytest.mark.e2e


def test_diagnose_finds_the_seed_problem_then_all_green(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    result = stack.cli("diagnose", "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    (account,) = doc["accounts"]
    assert account["task_state"] == "waiting_login"
    assert [p["code"] for p in account["problems"]] == ["not_logged_in"]
    assert "hiscrm login acc-1" in account["problems"][0]["remedy"]
    human = stack.cli("diagnose", "acc-1")
    assert human.returncode == 1 and "hiscrm login acc-1" in human.stdout

    stack.cli(
        "account", "login-success", "acc-1", "--platform-user-id", "u-1", "--wait", check=True
    )
    stack.wait_task("w1", "acc-1", "running", version=2)
    wait_for(
        lambda: stack.cli("data", "acc-1", "--json").stdout.count('"item_id"') > 0,
        what="crawled items",
    )
    result = stack.cli("diagnose", "--json")
    assert result.returncode == 0, result.stdout
    doc = json.loads(result.stdout)
    account = doc["accounts"][0]
    assert (account["config_version"], account["applied_version"]) == (2, 2)
    assert account["platform_user_id"] == "u-1" and account["comments"] > 0
    assert account["recent_comments"][0]["text"].startswith("generated comment")
    assert doc["workers"][0]["id"] == "w1" and doc["workers"][0]["alive"] is True
    assert "all green" in stack.cli("diagnose").stdout


def test_diagnose_names_a_dead_worker_and_an_unreachable_redis(stack: Stack) -> None:
    stack.extra_env["HISCRM_HEARTBEAT_TTL_S"] = "0.5"
    stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    stack.kill("w1")
    wait_for(lambda: not stack.r.exists(stack.keys.worker("w1")), what="heartbeat expiry")
    result = stack.cli("diagnose", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    codes = {p["code"] for p in doc["problems"]} | {
        p["code"] for a in doc["accounts"] for p in a["problems"]
    }
    assert {"worker_offline", "no_worker_for_platform", "no_master"} <= codes
    stack.redis_url = "redis://127.0.0.1:1/0"
    assert stack.cli("diagnose").returncode == 2


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_master_serves_prometheus_metrics(stack: Stack) -> None:
    port = free_port()
    stack.master(HISCRM_METRICS_PORT=str(port))
    stack.worker("w1")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    stack.cli("account", "set", "acc-1", "name=x", "--wait", check=True)

    def scraped() -> dict[str, float] | None:
        m = _scrape(port)
        done = (
            m.get("hiscrm_updates_applied_total", 0) >= 2
            and m.get('hiscrm_tasks{state="waiting_login"}') == 1
        )
        return m if done else None

    m = wait_for(scraped, what="metrics to show the updates")
    assert m["hiscrm_updates_sent_total"] >= 2
    assert m["hiscrm_updates_failed_total"] == 0
    assert m["hiscrm_workers_alive"] == 1
    assert m["hiscrm_update_latency_seconds_count"] >= 1


def test_json_logs_name_the_account_worker_and_update(stack: Stack) -> None:
    stack.master(HISCRM_LOG_FORMAT="json")
    stack.worker("w1", HISCRM_LOG_FORMAT="json")
    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    stack.cli("account", "set", "acc-1", "name=x", "--wait", check=True)
    update_id = stack.outcomes()[-1]["update_id"]
    for name in ("w1", "m1"):
        lines = [json.loads(line) for line in stack.log(name).splitlines() if line.strip()]
        assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    worker_msgs = [line["msg"] for line in map(json.loads, stack.log("w1").splitlines())]
    received = [m for m in worker_msgs if m.startswith("received account config update")]
    assert any("acc-1" in m and update_id in m for m in received)
    assert any(m.startswith("updated account config in MonitorTask for acc-1") for m in worker_msgs)
    master_msgs = [line["msg"] for line in map(json.loads, stack.log("m1").splitlines())]
    assert any(update_id in m and "applied by worker w1" in m for m in master_msgs)
