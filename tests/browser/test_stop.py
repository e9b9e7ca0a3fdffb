"""Ctrl-C in a terminal reaches the worker's whole process group (the Playwright driver
too): the worker still stops in order, exit 0, no traceback, Chromium gone (issue 15,
finding 8)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from tests.browser.conftest import Site
from tests.browser.flows import start_login
from tests.e2e.stack import Stack, wait_for

pytestmark = [pytest.mark.e2e]


def _chromium_of(data_dir: str) -> list[int]:
    """Chromium processes started for this worker (their HOME is its data dir)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read()
        except OSError:
            continue
        if "chrom" in comm and f"HOME={data_dir}".encode() in environ:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_terminal_stop_ends_the_worker_and_its_browser_cleanly(
    browser_stack: Stack, site_factory: Callable[..., Site], sig: signal.Signals
) -> None:
    stack = browser_stack
    site = site_factory()
    stack.extra_env["HISCRM_SANDBOX_URL"] = site.url
    stack.master()
    worker = stack.worker("w1", session=True)
    stack.add("acc-1", platform="sandbox")
    stack.wait_task("w1", "acc-1", "waiting_login")
    login = start_login(stack)  # the login page is open: Chromium runs
    try:
        data_dir = stack.extra_env["HISCRM_DATA_DIR"]
        home = next(p for p in (f"{data_dir}/chromium-home", data_dir) if os.path.isdir(p))
        wait_for(lambda: _chromium_of(home) or _chromium_of(data_dir), what="chromium up")
        os.killpg(worker.pid, sig)  # what a terminal does: the whole group
        assert worker.wait(30) == 0, stack.log("w1")[-3000:]
    finally:
        login.kill()
        login.communicate(timeout=10)
    log = stack.log("w1")
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert "worker w1 stopped" in log
    wait_for(lambda: not _chromium_of(home) and not _chromium_of(data_dir), what="chromium gone")
