"""Bursts are not lost (issue 15, finding 5): the crawler pages the sandbox site's lists
in headless Chromium back to the newest item it already took, at most
``max_items_per_crawl`` a crawl, says how many it left, and takes them later.

In-process first (the platform against the site, timed), then through real master and
worker processes on a real Redis, as a user runs them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from hiscrm_bus.accounts import AccountConfig
from hiscrm_sandbox.site import SandboxServer
from hiscrm_worker.platforms.sandbox import SandboxPlatform
from tests.browser.conftest import Site
from tests.browser.inprocess import logged_in
from tests.e2e.stack import Stack, wait_for

USER = "1864722759"


# in-process: the platform, Chromium and the site


async def _logged_in(site: SandboxServer, platform: SandboxPlatform, limit: int) -> AccountConfig:
    account = AccountConfig(id="acc-1", platform="sandbox", max_items_per_crawl=limit)
    return await logged_in(site, platform, account, USER, "fan")


def _ids(n: int, m: int) -> list[str]:
    """Comment ids c{n} down to c{m}, newest first."""
    return [f"c{i}" for i in range(n, m - 1, -1)]


async def test_the_platform_pages_a_burst_in_chromium(
    site: SandboxServer, platform: SandboxPlatform
) -> None:
    account = await _logged_in(site, platform, 1000)
    assert list(await platform.fetch_comments(account)) == []  # nothing yet
    site.state.add_items("comments", USER, [f"burst {i}" for i in range(1, 1011)], "fan")
    started = time.perf_counter()
    got = await platform.fetch_comments(account)
    took = time.perf_counter() - started
    assert [i.item_id for i in got] == _ids(1010, 11)
    assert got.left == 10
    print(f"\n1,010 comments: 1,000 taken from 51 pages of the work's list in {took:.2f} s")
    # the next crawl opens the list at the cursor where the bound stopped
    got = await platform.fetch_comments(account)
    assert [i.item_id for i in got] == _ids(10, 1)
    assert got.left == 0
    site.state.add_items("comments", USER, ["later"] * 3, "fan")
    got = await platform.fetch_comments(account.model_copy(update={"max_items_per_crawl": 2}))
    assert [i.item_id for i in got] == ["c1013", "c1012"] and got.left == 1
    got = await platform.fetch_comments(account)
    assert [i.item_id for i in got] == ["c1011"] and got.left == 0
    # DMs are paged the same way, on their own
    site.state.add_items("dms", USER, ["hi"] * 120, "fan")
    got = await platform.fetch_dms(account)
    assert len(got) == 120 and got.left == 0  # a first crawl of the DMs: the newest 120


# real processes: what a user sees


def _login(stack: Stack, site: Site) -> None:
    login = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hiscrm_cli",
            "--log-level",
            "warning",
            "login",
            "acc-1",
            "--timeout",
            "60",
            "--qr-dir",
            str(stack.workdir / "qr"),
        ],
        env=stack.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert login.stdout is not None
    shown = ""
    for line in login.stdout:
        shown += line
        if "QR code" in line:
            break
    _sandbox(site, "scan", "--user-id", USER)
    out, _ = login.communicate(timeout=60)
    assert login.returncode == 0, shown + out


def _sandbox(site: Site, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "sandbox", *args, "--url", site.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _running(stack: Stack, site: Site, max_items: int, interval: str) -> dict[str, Any]:
    """A logged-in sandbox account whose first crawl found the list empty."""
    stack.extra_env["HISCRM_SANDBOX_URL"] = site.url
    stack.master()
    stack.worker("w1")
    stack.add("acc-1", interval=interval, platform="sandbox")
    stack.cli("account", "set", "acc-1", f"max_items_per_crawl={max_items}", "--wait", check=True)
    stack.wait_task("w1", "acc-1", "waiting_login")
    _login(stack, site)
    return wait_for(lambda: _task(stack, lambda t: t["crawls"] >= 1), what="the first crawl")


def _task(stack: Stack, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    task = stack.task("w1", "acc-1")
    return task if task and task["state"] == "running" and ok(task) else None


def _database(stack: Stack) -> Path | None:
    """The Master's SQLite file, once it exists."""
    url = stack.env()["HISCRM_DATABASE_URL"]
    path = Path(url.removeprefix("sqlite+aiosqlite:///"))
    return path if url.startswith("sqlite+aiosqlite:///") and path.exists() else None


def _stored(stack: Stack) -> list[str]:
    """The comment ids of acc-1 in the Master's database, newest first (ids break the
    ties of one second). A cheap probe, read-only on the SQLite file; the test checks
    what ``hiscrm data`` shows at the end."""
    path = _database(stack)
    if path is None:
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        rows = db.execute("SELECT item_id FROM comments WHERE account_id = 'acc-1'").fetchall()
    return sorted((r[0] for r in rows), key=lambda i: -int(i[1:]))


def _shown(stack: Stack) -> list[str]:
    """The comment ids ``hiscrm data`` shows, newest first, each once."""
    result = stack.cli("data", "acc-1", "--json", "--limit", "10000", check=True)
    ids = [i["item_id"] for i in json.loads(result.stdout)["items"]]
    assert len(ids) == len(set(ids))
    return sorted(ids, key=lambda i: -int(i[1:]))


def _no_items_in_redis(stack: Stack) -> None:
    """Redis carries only the bus: of acc-1 it holds its config, pending updates and
    session, never a crawled item."""
    keys = stack.keys
    held = set(stack.r.scan_iter(f"{stack.prefix}account:acc-1*"))
    assert held <= {keys.account("acc-1"), keys.account_pending("acc-1"), keys.session("acc-1")}


def _batches(stack: Stack) -> list[list[str]]:
    """The comment ids of each crawl batch the Master stored, in order: a batch's items
    share the time Redis received it, and are inserted in the batch's order. (The ingest
    stream itself keeps only what is not stored yet.)"""
    path = _database(stack)
    if path is None:
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        rows = db.execute(
            "SELECT item_id, received_at FROM comments WHERE account_id = 'acc-1' ORDER BY id"
        ).fetchall()
    batches: list[list[str]] = []
    last = None
    for item_id, received in rows:
        if received != last:
            batches.append([])
            last = received
        batches[-1].append(item_id)
    return batches


def test_a_burst_of_1010_is_stored_whole_the_bound_leaving_10_to_the_next_crawl(
    browser_stack: Stack, site_factory: Callable[..., Site]
) -> None:
    stack, site = browser_stack, site_factory()
    _running(stack, site, max_items=1000, interval="1.5")
    posted = time.monotonic()
    assert "1010 comments (c1 … c1010) posted" in _sandbox(
        site, "post-comment", "burst", "--user-id", USER, "--count", "1010"
    )
    # the next crawl pages back through 21 pages and takes 1,000: the bound; its report
    # says 10 are left
    wait_for(lambda: _task(stack, lambda t: t["items_left"] == 10), what="10 left")
    wait_for(lambda: len(_stored(stack)) >= 1000, what="1,000 stored")
    stored_in = time.monotonic() - posted
    assert _stored(stack)[:1000] == _ids(1010, 11)
    # the crawl after takes the 10 it left (one crawl each: the worker's batches); the
    # database keeps every one of them
    wait_for(lambda: _batches(stack) == [_ids(1010, 11), _ids(10, 1)], what="the 10 fetched")
    wait_for(lambda: _task(stack, lambda t: t["items_left"] == 0), what="none left")
    wait_for(lambda: len(_stored(stack)) == 1010, what="all 1,010 stored")
    assert _stored(stack) == _shown(stack) == _ids(1010, 1)
    doc = json.loads(stack.cli("data", "acc-1", "--json", "--limit", "1", check=True).stdout)
    assert (doc["comments"], doc["crawl_batches"]) == (1010, 2)
    assert stack.task("w1", "acc-1")["error"] is None
    _no_items_in_redis(stack)
    print(f"\n1,010 posted at once: 1,000 stored {stored_in:.2f} s later (crawl interval 1.5 s)")


def test_a_small_bound_leaves_items_that_later_crawls_store(
    browser_stack: Stack, site_factory: Callable[..., Site]
) -> None:
    stack, site = browser_stack, site_factory()
    _running(stack, site, max_items=100, interval="1.5")
    posted = time.monotonic()
    _sandbox(site, "post-comment", "burst", "--user-id", USER, "--count", "950")
    # the first crawl after the burst takes the newest 100 and says 850 are left
    wait_for(lambda: _task(stack, lambda t: t["items_left"] == 850), what="850 left")
    wait_for(lambda: _stored(stack)[:100] == _ids(950, 851), what="the newest 100 stored")
    # each later crawl takes the next 100, newest first, until none is left: ten crawls
    wait_for(lambda: len(_stored(stack)) == 950, timeout=60, what="950 stored")
    took = time.monotonic() - posted
    assert _stored(stack) == _shown(stack) == _ids(950, 1)  # all of them, each once
    assert _batches(stack) == [_ids(950 - 100 * k, max(1, 851 - 100 * k)) for k in range(10)]
    wait_for(lambda: _task(stack, lambda t: t["items_left"] == 0), what="none left")
    _no_items_in_redis(stack)
    print(f"\n950 posted at once, 100 a crawl: all stored {took:.2f} s later in 10 crawls")
