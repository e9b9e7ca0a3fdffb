"""Worker memory with 1 and with 10 logged-in sandbox accounts (a benchmark, not a test).

Starts a private redis-server (the tests' starter, tests/redis_server.py), the sandbox
site (as the browser tests start it, tests/browser/conftest.py), a Master and one worker
(the tests' process stack, tests/e2e/stack.py); logs accounts in through the real QR
flow (``hiscrm login`` and ``hiscrm sandbox scan``, tests/browser/flows.py); waits until
the worker reports every task running and crawled at least once; then sums the PSS of
the worker process and its Chromium processes (from /proc/*/smaps_rollup). Chromium is
the one the settings find (Debian's /usr/bin/chromium, or HISCRM_CHROMIUM).

Run from the repository's root, so that ``tests`` is importable:

    .venv/bin/python -m benchmarks.worker_memory [--accounts 1 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    from tests.browser.conftest import Site, _start_site
    from tests.browser.flows import log_in
    from tests.e2e.stack import Stack, running_stack, wait_for
    from tests.redis_server import RedisServer, running
except ImportError as exc:
    raise SystemExit(
        f"the tests' helpers are not importable ({exc}): run from the repository's root as "
        ".venv/bin/python -m benchmarks.worker_memory"
    ) from None

WORKER = "w1"
INTERVAL = "5"  # seconds between a task's crawls


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


@contextmanager
def sandbox_site(workdir: Path) -> Iterator[Site]:
    """``hiscrm sandbox serve`` with its default QR settings, started as the browser
    tests start it; stopped after the block."""
    site = _start_site(workdir, qr_ttl=60, max_refresh=3)
    try:
        yield site
    finally:
        site.proc.terminate()
        site.proc.wait(10)


def all_crawled(stack: Stack, accounts: list[str]) -> bool:
    """The worker reports every account's task running and crawled at least once."""
    for account in accounts:
        task = stack.task(WORKER, account)
        if not (task and task["state"] == "running" and task["crawls"] > 0):
            return False
    return True


def run(accounts: int, workdir: Path) -> dict[str, float]:
    names = [f"acc-{n}" for n in range(accounts)]
    with (
        running(RedisServer(workdir / "redis")) as server,
        sandbox_site(workdir) as site,
        running_stack(server.url, "mem:", workdir) as stack,
    ):
        stack.extra_env["HISCRM_DATA_DIR"] = str(workdir / "worker")
        stack.extra_env["HISCRM_SANDBOX_URL"] = site.url
        stack.master()
        worker = stack.worker(WORKER)
        for n, account in enumerate(names):
            stack.add(account, worker=WORKER, interval=INTERVAL, platform="sandbox")
            log_in(stack, site, account, user=f"9{n:04d}")
        wait_for(
            lambda: all_crawled(stack, names),
            timeout=60,
            what="every task running and crawled once",
        )
        pids = tree(worker.pid)
        total = sum(pss_kib(p) for p in pids)
        return {
            "accounts": accounts,
            "processes": len(pids),
            "pss_mib": round(total / 1024, 1),
            "worker_python_pss_mib": round(pss_kib(worker.pid) / 1024, 1),
        }


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
