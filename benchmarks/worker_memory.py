"""Worker memory with 1 and with 10 logged-in sandbox accounts (a benchmark, not a test).

Starts a private redis-server, the sandbox site, a Master and one worker; logs accounts
in through the real QR flow; waits until every task is running; then sums the PSS of
the worker process and its Chromium processes (from /proc/*/smaps_rollup).

    .venv/bin/python benchmarks/worker_memory.py [--accounts 1 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

T = TypeVar("T")

PY = [sys.executable, "-m", "hiscrm_cli", "--log-level", "warning"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(probe: Callable[[], T], timeout: float = 60, what: str = "it") -> T:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def run(accounts: int, workdir: Path) -> dict[str, float]:
    port, site_port = free_port(), free_port()
    env = dict(
        os.environ,
        HISCRM_REDIS_URL=f"redis://127.0.0.1:{port}/0",
        HISCRM_SANDBOX_URL=f"http://127.0.0.1:{site_port}",
        HISCRM_DATA_DIR=str(workdir / "worker"),
        HISCRM_HEARTBEAT_INTERVAL_S="0.5",
    )
    procs = [
        subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL,
        ),
    ]
    r = redis.Redis(port=port, decode_responses=True)
    wait(lambda: _ping(r), what="redis")
    procs.append(
        subprocess.Popen(
            [*PY, "sandbox", "serve", "--port", str(site_port)], env=env, stdout=subprocess.DEVNULL
        )
    )
    procs.append(subprocess.Popen([*PY, "master"], env=env, stderr=subprocess.DEVNULL))
    worker = subprocess.Popen([*PY, "worker", "--id", "w1"], env=env, stderr=subprocess.DEVNULL)
    procs.append(worker)
    try:
        wait(lambda: r.exists("hiscrm:worker:w1"), what="worker")
        wait(lambda: _up(f"http://127.0.0.1:{site_port}/login"), what="site")
        for n in range(accounts):
            acc = f"acc-{n}"
            subprocess.run(
                [
                    *PY,
                    "account",
                    "add",
                    acc,
                    "--platform",
                    "sandbox",
                    "--worker",
                    "w1",
                    "--interval",
                    "5",
                ],
                env=env,
                check=True,
                capture_output=True,
            )
            login = subprocess.Popen(
                [*PY, "login", acc, "--qr-dir", str(workdir / "qr")],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert login.stdout is not None
            for line in login.stdout:
                if "QR code" in line:
                    break
            subprocess.run(
                [*PY, "sandbox", "scan", "--user-id", f"9{n:04d}"],
                env=env,
                check=True,
                capture_output=True,
            )
            login.communicate(timeout=60)
            assert login.returncode == 0, f"login of {acc} failed"
        wait(lambda: _all_running(r, accounts), what="all tasks running")
        time.sleep(6)  # let every task crawl at least once at its 5 s interval
        pids = tree(worker.pid)
        total = sum(pss_kib(p) for p in pids)
        return {
            "accounts": accounts,
            "processes": len(pids),
            "pss_mib": round(total / 1024, 1),
            "worker_python_pss_mib": round(pss_kib(worker.pid) / 1024, 1),
        }
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(20)


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.ConnectionError:
        return False


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except OSError:
        return False


def _all_running(r: redis.Redis, n: int) -> bool:
    tasks = json.loads(r.hget("hiscrm:worker:w1", "tasks") or "{}")
    return sum(1 for t in tasks.values() if t["state"] == "running" and t["crawls"] > 0) == n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    for n in args.accounts:
        workdir = Path(tempfile.mkdtemp(prefix="hiscrm-mem-"))
        try:
            print(json.dumps(run(n, workdir)), flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
