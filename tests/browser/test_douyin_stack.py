"""The douyin walk as an operator meets it, through real master and worker processes on
a real Redis, with the sandbox site in Chromium (issue 12): comments with their work and
parent and DMs with their conversation in ``hiscrm data`` and its ``--json``; a site
change in ``diagnose`` as ``platform_changed`` after one crawl, and gone once the site
is back."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.browser.conftest import Site
from tests.browser.flows import USER, log_in, sandbox
from tests.e2e.stack import Stack, wait_for

pytestmark = [pytest.mark.e2e]


def _data(stack: Stack, kind: str) -> dict[str, Any]:
    out = stack.cli("data", "acc-1", "--kind", kind, "--json", "--limit", "100", check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def _task_error(stack: Stack) -> str | None:
    task = stack.task("w1", "acc-1")
    return task["error"] if task and task["state"] == "error" else None


def test_works_replies_and_conversations_reach_the_operator_and_drift_reaches_diagnose(
    browser_stack: Stack, site_factory: Callable[..., Site]
) -> None:
    stack, site = browser_stack, site_factory()
    stack.extra_env["HISCRM_SANDBOX_URL"] = site.url
    stack.master()
    stack.worker("w1")
    stack.add("acc-1", worker="w1", platform="sandbox", interval="0.5")
    stack.wait_task("w1", "acc-1", "waiting_login")
    log_in(stack, site)
    stack.wait_task("w1", "acc-1", "running")

    assert sandbox(site, "post-work", "秋冬上新", "--user-id", USER) == "work w2 posted"
    assert sandbox(site, "post-comment", "好看", "--user-id", USER, "--work", "w2") == (
        "comment c1 posted"
    )
    assert sandbox(site, "post-reply", "谢谢", "--to", "c1", "--user-id", USER) == (
        "reply c2 to c1 posted"
    )
    sandbox(site, "send-dm", "在吗", "--user-id", USER, "--author", "小李")
    sandbox(site, "send-dm", "你好", "--user-id", USER, "--author", "阿珍")
    comments = wait_for(lambda: (d := _data(stack, "comments"))["comments"] == 2 and d, what="2")
    by_id = {i["item_id"]: i["extra"] for i in comments["items"]}
    assert by_id["c1"]["work_id"] == "w2" and by_id["c1"]["work_title"] == "秋冬上新"
    assert by_id["c2"]["parent_id"] == "c1" and by_id["c2"]["work_id"] == "w2"
    dms = wait_for(lambda: (d := _data(stack, "dms"))["dms"] == 2 and d, what="2 DMs")
    conversations = {i["extra"]["conversation_id"] for i in dms["items"]}
    assert len(conversations) == 2

    table = stack.cli("data", "acc-1", "--kind", "dms", check=True).stdout
    assert "conversation" in table
    assert all(c.split(":")[-1] in table for c in conversations)
    table = stack.cli("data", "acc-1", check=True).stdout
    assert "work" in table and "parent" in table
    assert any("c2" in line and "w2" in line and "c1" in line for line in table.splitlines())

    # the site changes: the next crawl says so, and diagnose shows it
    sandbox(site, "drift", "comments")
    error = wait_for(lambda: _task_error(stack), what="the task error")
    assert error.startswith("platform_changed: ") and "comment_info_list" in error
    doc = json.loads(stack.cli("diagnose", "acc-1", "--json").stdout)
    (finding,) = [p for p in doc["accounts"][0]["problems"] if p["code"] == "platform_changed"]
    assert "platform_changed: " in finding["message"]
    assert "hiscrm_worker/platforms/douyin_api.py" in finding["remedy"]
    sandbox(site, "drift", "comments", "--mode", "off")
    wait_for(lambda: _task_error(stack) is None, what="the task running again")
