"""An expired login closes the loop (issue 10): the platform refuses the session, the
Master records login_status=expired as a tracked update, the task waits for a login
with the seed's message instead of retrying, diagnose and `account list --needs-login`
name the remedy, and `hiscrm login` brings the account back to running."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from hiscrm_bus.accounts import MISSING_USER_ID
from tests.browser.conftest import Site
from tests.browser.flows import USER, log_in, sandbox
from tests.e2e.stack import Stack, wait_for

pytestmark = [pytest.mark.e2e]


def test_an_expired_session_waits_for_a_login_and_a_login_brings_it_back(
    browser_stack: Stack, site_factory: Callable[..., Site]
) -> None:
    stack = browser_stack
    site = site_factory()
    stack.extra_env["HISCRM_SANDBOX_URL"] = site.url
    stack.master()
    stack.worker("w1")
    stack.add("acc-1", worker="w1", platform="sandbox", interval="0.3")
    stack.wait_task("w1", "acc-1", "waiting_login")
    log_in(stack, site)
    stack.wait_task("w1", "acc-1", "running")

    assert "1 session(s)" in sandbox(site, "expire", "--user-id", USER)
    wait_for(lambda: stack.account("acc-1").get("login_status") == "expired", what="expired")
    expiry = wait_for(
        lambda: [o for o in stack.outcomes() if o["reason"] == "login_expired"],
        what="the expiry's outcome",
    )
    assert expiry[0]["status"] == "applied"
    task = stack.wait_task("w1", "acc-1", "waiting_login", version=int(expiry[0]["version"]))
    assert task["error"] == MISSING_USER_ID
    crawls = task["crawls"]

    doc = json.loads(stack.cli("diagnose", "acc-1", "--json").stdout)
    (finding,) = [p for p in doc["accounts"][0]["problems"] if p["code"] == "login_expired"]
    assert "hiscrm login acc-1" in finding["remedy"]
    listed = stack.cli("account", "list", "--needs-login")
    assert listed.returncode == 0 and "hiscrm login acc-1" in listed.stdout

    log_in(stack, site)
    assert stack.account("acc-1")["login_status"] == "logged_in"
    # while it waited it never tried the dead session again: one refusal, one report
    assert stack.log("w1").count("sandbox session of acc-1 is not logged in") == 1
    stack.wait_task("w1", "acc-1", "running")
    wait_for(lambda: stack.task("w1", "acc-1")["crawls"] > crawls, what="crawling again")
    assert "hiscrm login acc-1" not in stack.cli("account", "list", "--needs-login").stdout
