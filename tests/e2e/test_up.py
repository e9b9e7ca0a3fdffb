"""`hiscrm up`: the whole stack in one command, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of ours is gone too
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


def _chromium_of(data_dir: Path) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"chromium" in cmdline and str(data_dir).encode() in cmdline:
                pids.append(int(proc.name))
    return pids


def test_up_demo_plays_the_seed_scenario_and_stops_everything(tmp_path: Path) -> None:
    data_dir = tmp_path / "up"
    for _run in range(2):  # a second `make demo` plays it again from the start
        result = subprocess.run(
            [sys.executable, "-m", "hiscrm_cli", "up", "--demo", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    timeline = [
        "account demo-1 added",
        "waiting_login — Account missing platform_user_id",
        "QR code shown",
        "scanned with the (simulated) phone",
        "Master saved platform_user_id 1864722759",
        "applied version",
        "task running",
        "crawled 3 comments and 1 DM",
        "hiscrm diagnose: all green",
        "no process left behind",
    ]
    positions = [out.find(step) for step in timeline]
    assert -1 not in positions, out
    assert positions == sorted(positions), out
    pids = json.loads((data_dir / "pids.json").read_text())
    assert set(pids) == {"redis", "sandbox", "master", "worker"}
    assert all(_gone(pid) for pid in pids.values())
    assert _chromium_of(data_dir) == []


def test_up_runs_until_ctrl_c_then_leaves_no_process(tmp_path: Path) -> None:
    data_dir = tmp_path / "up"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hiscrm_cli", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ctrl-C stops everything" in line:
            break
    pids = json.loads((data_dir / "pids.json").read_text())
    assert all(not _gone(pid) for pid in pids.values())
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "no process left behind" in out
    wait_for(lambda: all(_gone(pid) for pid in pids.values()), what="children gone")


def test_up_without_redis_server_says_how_to_get_one(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # no redis-server on this PATH
    result = subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "up", "--data-dir", str(tmp_path / "up")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 2
    assert "apt-get install redis-server" in result.stderr
