"""Sessions follow the account (issue 10): log in once on w1, and the account keeps
crawling logged in on w2 after w1 dies, and on a worker restarted with an empty data
dir, with no new QR scan; no session byte reaches a log, the bus or diagnose."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.browser.conftest import Site
from tests.browser.flows import USER, log_in, sandbox
from tests.e2e.stack import Stack, wait_for

pytestmark = [pytest.mark.e2e]


def _texts(stack: Stack) -> set[str]:
    result = stack.cli("data", "acc-1", "--json", "--limit", "100", check=True)
    return {i["text"] for i in json.loads(result.stdout)["items"]}


def _session_cookie(stack: Stack) -> str:
    """The sandbox's session cookie value, from w1's local cache (test-only peek)."""
    for data_dir in stack.workdir.glob("data-*"):
        state = data_dir / "state" / "acc-1.json"
        if state.exists():
            cookies = json.loads(state.read_text())["cookies"]
            return next(c["value"] for c in cookies if c["name"] == "sandbox_session")
    raise AssertionError("no saved session")


def test_a_login_survives_failover_and_an_empty_data_dir(
    browser_stack: Stack, site_factory: Callable[..., Site], tmp_path: Path
) -> None:
    stack = browser_stack
    site = site_factory()
    key = tmp_path / "session.key"
    assert stack.cli("session", "keygen", "--out", str(key)).returncode == 0
    stack.extra_env.update(HISCRM_SANDBOX_URL=site.url, HISCRM_SESSION_KEY_FILE=str(key))
    for worker in ("w1", "w2"):  # every event kept for the secrets check at the end
        stack.observe(worker, "events")
    stack.master()
    data = {w: str(stack.workdir / f"data-{w}") for w in ("w1", "w2", "w3")}
    stack.worker("w1", HISCRM_DATA_DIR=data["w1"], HISCRM_HEARTBEAT_TTL_S="2")
    stack.add("acc-1", worker="w1", platform="sandbox", interval="0.5")
    stack.wait_task("w1", "acc-1", "waiting_login")

    log_in(stack, site)
    stack.wait_task("w1", "acc-1", "running")
    session = stack.r.hgetall(stack.keys.session("acc-1"))
    assert int(session["version"]) >= 1 and session["by"] == "w1"

    # w1 dies; w2 (its own, empty data dir, as on another host) takes the account
    stack.worker("w2", HISCRM_DATA_DIR=data["w2"])
    stack.kill("w1")
    wait_for(lambda: stack.account("acc-1").get("worker_id") == "w2", timeout=30)
    stack.wait_task("w2", "acc-1", "running")
    sandbox(site, "post-comment", "after failover", "--user-id", USER, "--author", "fan2")
    wait_for(lambda: "after failover" in _texts(stack), what="a comment crawled on w2")

    # w2 restarted on a fresh data dir: still logged in, from the vault alone
    stack.kill("w2", 15)
    stack.worker("w2", HISCRM_DATA_DIR=data["w3"])
    stack.wait_task("w2", "acc-1", "running")
    sandbox(site, "post-comment", "after restart", "--user-id", USER, "--author", "fan3")
    wait_for(lambda: "after restart" in _texts(stack), what="a comment crawled after restart")

    # no session byte in logs, streams or diagnose
    secret = _session_cookie(stack)
    everything = "".join(stack.log(n) for n in ("m1", "w1", "w2"))
    everything += stack.cli("diagnose", "--json").stdout
    for stream in stack.r.scan_iter(stack.keys.worker_stream("*", "events")):
        everything += json.dumps(stack.r.xrange(stream))
    assert secret and secret not in everything
