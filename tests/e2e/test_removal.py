"""Issue 15 on real processes: ``account remove`` leaves nothing behind while the worker
is crawling (finding 6): nothing in Redis at once, nothing in the database (issue 16)
once the Master's archive pass ran; and ``hiscrm data`` reports crawls that found
nothing (finding 4)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e


def data(stack: Stack, account_id: str) -> dict[str, Any] | None:
    result = stack.cli("data", account_id, "--json")
    return json.loads(result.stdout) if result.returncode == 0 else None


def crawled(stack: Stack, account_id: str) -> int:
    doc = data(stack, account_id)
    return int(doc["comments"]) if doc else 0


def test_remove_leaves_nothing_and_re_adding_starts_empty(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    for account_id in ("acc-1", "acc-2"):
        stack.add(account_id, interval="0.05")
        stack.cli("account", "login-success", account_id, "--platform-user-id", "u-1", check=True)
    wait_for(lambda: crawled(stack, "acc-1") >= 3 and crawled(stack, "acc-2") >= 3, what="items")
    # the items are in the database: Redis carries only the bus
    held = {k for a in ("acc-1", "acc-2") for k in stack.r.scan_iter(f"{stack.prefix}account:{a}*")}
    assert held <= {stack.keys.account(a) for a in ("acc-1", "acc-2")} | {
        stack.keys.account_pending(a) for a in ("acc-1", "acc-2")
    }

    # removed mid-crawl: batches on their way are refused, none brings data back
    result = stack.cli("account", "remove", "acc-1")
    assert result.returncode == 0, result.stderr
    assert "its crawled data is being deleted from the database by the Master" in result.stdout
    wait_for(lambda: stack.task("w1", "acc-1") is None, what="task stopped")
    # the Master's archive pass deletes the data, then the queued removal
    wait_for(lambda: stack.r.zscore(stack.keys.removals, "acc-1") is None, what="data deleted")
    wait_for(lambda: crawled(stack, "acc-2") >= 6, what="more crawls of acc-2")
    assert set(stack.r.scan_iter(f"{stack.prefix}account:acc-1*")) == set()
    gone = stack.cli("data", "acc-1")
    assert (gone.returncode, gone.stderr.strip()) == (1, "error: no account 'acc-1'")
    assert stack.cli("data", "export", "acc-1", check=True).stdout == ""

    stack.add("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")
    doc = data(stack, "acc-1")
    assert doc is not None
    assert (doc["comments"], doc["dms"], doc["crawl_batches"]) == (0, 0, 0)
    assert doc["items"] == [] and doc["last_batch_at"] is None

    # --keep-data: the items stay and are still shown
    kept = crawled(stack, "acc-2")
    result = stack.cli("account", "remove", "acc-2", "--keep-data")
    assert result.returncode == 0 and "crawled data kept" in result.stdout
    assert stack.r.zscore(stack.keys.removals, "acc-2") is None
    doc = data(stack, "acc-2")
    assert doc is not None and doc["account_exists"] is False
    assert doc["comments"] >= kept


def test_data_reports_crawls_that_found_nothing(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1", interval="0.05")
    stack.cli("account", "set", "acc-1", "crawl_comments=false", "crawl_dms=false", check=True)
    stack.cli("account", "login-success", "acc-1", "--platform-user-id", "u-1", check=True)
    wait_for(lambda: (stack.task("w1", "acc-1") or {}).get("crawls", 0) >= 3, what="crawls")

    result = stack.cli("data", "acc-1")
    assert result.returncode == 0, result.stderr
    assert "0 comments on 0 works, 0 DMs in 0 conversations stored; 0 crawl batches" in (
        result.stdout
    )
    assert "last crawl 20" in result.stdout and "on worker w1:" in result.stdout
    assert "0 item(s) found since the task started; task running" in result.stdout
    doc = data(stack, "acc-1")
    assert doc is not None
    assert doc["last_crawl_at"] is not None and doc["last_batch_at"] is None
    assert (doc["comments"], doc["crawl_batches"], doc["task"]["crawls"] >= 3) == (0, 0, True)
