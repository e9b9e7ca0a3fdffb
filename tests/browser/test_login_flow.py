"""The seed's whole test plan, for real and offline: headless Chromium against the
sandbox site, through real master and worker processes on a real Redis."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.browser.conftest import Site
from tests.e2e.stack import Stack, wait_for

pytestmark = pytest.mark.e2e


def _login(stack: Stack, account_id: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hiscrm_cli",
            "--log-level",
            "warning",
            "login",
            account_id,
            "--qr-dir",
            str(stack.workdir / "qr"),
            *args,
        ],
        env=stack.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], needle: str) -> str:
    """Read the command's output line by line until ``needle`` appears."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"{needle!r} never appeared in: {''.join(seen)}")


def _comments(stack: Stack, account_id: str) -> list[dict[str, object]]:
    result = stack.cli("data", account_id, "--json", "--limit", "100", check=True)
    return json.loads(result.stdout)["items"]  # type: ignore[no-any-return]


def _setup(stack: Stack, site: Site, interval: str = "0.5") -> None:
    stack.extra_env["HISCRM_SANDBOX_URL"] = site.url
    stack.master()
    stack.worker("w1")
    stack.cli(
        "account",
        "add",
        "acc-1",
        "--platform",
        "sandbox",
        "--worker",
        "w1",
        "--interval",
        interval,
        check=True,
    )
    stack.wait_task("w1", "acc-1", "waiting_login")


def test_qr_login_hot_reloads_the_worker_and_crawls_comments_exactly_once(
    browser_stack: Stack, site_factory: Callable[..., Site]
) -> None:
    stack = browser_stack
    site = site_factory()
    _setup(stack, site)
    worker_pid = stack.procs["w1"].pid

    login = _login(stack, "acc-1", "--timeout", "60")
    shown = _read_until(login, "QR code")
    png = next((stack.workdir / "qr").glob("acc-1-*.png")).read_bytes()
    assert png.startswith(b"\x89PNG"), shown

    def scan(*extra: str) -> None:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "hiscrm_cli",
                "sandbox",
                "scan",
                "--user-id",
                "1864722759",
                "--nickname",
                "小王",
                "--url",
                site.url,
                *extra,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    scan("--no-confirm")  # the phone scanned; the user has not confirmed yet
    shown += _read_until(login, "login: scanned")
    scan()
    out, _ = login.communicate(timeout=60)
    assert login.returncode == 0, shown + out
    assert "platform_user_id 1864722759" in out
    assert "config update applied: version 2 by worker w1" in out

    account = stack.account("acc-1")
    assert account["platform_user_id"] == "1864722759"
    assert account["login_status"] == "logged_in"
    assert json.loads(account["user_info"])["nickname"] == "小王"
    stack.wait_task("w1", "acc-1", "running", version=2)
    assert stack.procs["w1"].pid == worker_pid and stack.procs["w1"].poll() is None

    post = subprocess.run(
        [
            sys.executable,
            "-m",
            "hiscrm_cli",
            "sandbox",
            "post-comment",
            "great video",
            "--user-id",
            "1864722759",
            "--author",
            "fan1",
            "--url",
            site.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "posted" in post.stdout
    items = wait_for(lambda: _comments(stack, "acc-1"), what="the comment in hiscrm data")
    assert [(i["text"], i["author"]) for i in items] == [("great video", "fan1")]
    # stored in the Master's database, which any SQL client can query
    database = Path(os.environ["HISCRM_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///"))
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT account_id, author, text FROM comments").fetchall()
    assert rows == [("acc-1", "fan1", "great video")]
    # later crawls see the same comment again; it is stored once
    crawls = stack.task("w1", "acc-1")["crawls"]
    wait_for(lambda: stack.task("w1", "acc-1")["crawls"] >= crawls + 2, what="more crawls")
    assert len(_comments(stack, "acc-1")) == 1
    # session data never travels on the bus or into logs
    assert "sandbox_session" not in stack.log("w1") + stack.log("m1")
    state = Path(stack.extra_env["HISCRM_DATA_DIR"]) / "state" / "acc-1.json"
    assert "sandbox_session" in state.read_text()
    assert state.stat().st_mode & 0o077 == 0

    # a restarted worker is still logged in from its saved state
    stack.kill("w1", 15)
    stack.worker("w1")
    stack.wait_task("w1", "acc-1", "running", version=2)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hiscrm_cli",
            "sandbox",
            "send-dm",
            "hello there",
            "--user-id",
            "1864722759",
            "--url",
            site.url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    dms = wait_for(
        lambda: json.loads(stack.cli("data", "acc-1", "--kind", "dms", "--json").stdout)["items"],
        what="the DM after a restart",
    )
    assert [d["text"] for d in dms] == ["hello there"]
    assert stack.task("w1", "acc-1")["error"] is None


def test_qr_code_expires_refreshes_then_the_login_fails(
    browser_stack: Stack, site_factory: Callable[..., Site]
) -> None:
    stack = browser_stack
    _setup(stack, site_factory(qr_ttl=1, max_refresh=1))
    login = _login(stack, "acc-1", "--timeout", "60")
    out, _ = login.communicate(timeout=90)
    assert login.returncode == 1, out
    assert "QR code refreshed (1)" in out
    assert "login failed (expired)" in out
    assert len(list((stack.workdir / "qr").glob("acc-1-*.png"))) == 2
    assert "platform_user_id" not in stack.account("acc-1")
    stack.wait_task("w1", "acc-1", "waiting_login")


def test_login_that_nobody_scans_times_out(
    browser_stack: Stack, site_factory: Callable[..., Site]
) -> None:
    stack = browser_stack
    _setup(stack, site_factory())
    login = _login(stack, "acc-1", "--timeout", "2")
    out, _ = login.communicate(timeout=60)
    assert login.returncode == 3, out
    assert "login failed (timeout)" in out


def test_login_for_an_unknown_or_offline_account_is_refused(browser_stack: Stack) -> None:
    stack = browser_stack
    result = stack.cli("login", "ghost")
    assert result.returncode == 1 and "no account" in result.stderr
    stack.cli("account", "add", "acc-9", "--platform", "sandbox", "--worker", "w9", check=True)
    result = stack.cli("login", "acc-9")
    assert result.returncode == 2 and "worker w9" in result.stderr and "offline" in result.stderr


def test_missing_chromium_is_one_sentence_and_exit_2(browser_stack: Stack) -> None:
    stack = browser_stack
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "worker", "--id", "w1"],
        env=stack.env(HISCRM_CHROMIUM="/nonexistent/chromium"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "apt-get install chromium" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_re_sent_login_request_runs_one_login(
    browser_stack: Stack, site_factory: Callable[..., Site]
) -> None:
    stack = browser_stack
    _setup(stack, site_factory())
    login = _login(stack, "acc-1", "--timeout", "3")
    first = _read_until(login, "waiting for the worker")
    session_id = first.split("login ", 1)[1].split(" ", 1)[0]
    duplicate = json.dumps(
        {
            "type": "master:login:request",
            "sender": "test",
            "session_id": session_id,
            "account_id": "acc-1",
            "timeout_s": 3,
        }
    )
    assert stack.r.publish(stack.keys.control("w1"), duplicate) == 1
    out, _ = login.communicate(timeout=60)
    assert login.returncode == 3, first + out
    assert "login failed (timeout)" in out
    # the worker's own account of it (the Master trims the events it has handled)
    log = stack.log("w1")
    assert log.count(f"login {session_id} for acc-1: opening the") == 1, log
    ends = re.findall(rf"login {session_id} for acc-1 failed \((\w+)\)", log)
    assert ends == ["timeout"], log
