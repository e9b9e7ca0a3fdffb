"""Real ``hiscrm master`` / ``hiscrm worker`` processes against a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import redis
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient

from hiscrm_bus.keys import Keys, StreamKind
from hiscrm_bus.settings import cluster_nodes, is_cluster_url
from tests.redis_server import free_port

T = TypeVar("T")

# short intervals so faults resolve in seconds; every one is a setting a user has too
FAST_ENV = {
    "HISCRM_ACK_TIMEOUT_S": "1.0",
    "HISCRM_RETRY_BACKOFF": "1.5",
    "HISCRM_MAX_ATTEMPTS": "6",
    "HISCRM_SWEEP_INTERVAL_S": "0.1",
    "HISCRM_LIVENESS_INTERVAL_S": "0.2",
    "HISCRM_HEARTBEAT_INTERVAL_S": "0.2",
    "HISCRM_HEARTBEAT_TTL_S": "30",
    "HISCRM_RECONCILE_INTERVAL_S": "30",
    "HISCRM_PING_INTERVAL_S": "1",
    "HISCRM_PING_TIMEOUT_S": "1",
    "HISCRM_BACKOFF_MIN_S": "0.02",
    "HISCRM_BACKOFF_MAX_S": "0.5",
    "HISCRM_CLAIM_IDLE_S": "2",
}


def wait_for(probe: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll a cheap Redis probe until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Stack:
    def __init__(
        self, redis_url: str, prefix: str, workdir: Path, probe_url: str | None = None
    ) -> None:
        """``probe_url``: what the test's own probes connect with, when ``redis_url``
        (the processes') carries no password."""
        self.redis_url = redis_url
        self.prefix = prefix
        self.cluster = is_cluster_url(redis_url)
        self.keys = Keys(prefix, cluster=self.cluster)
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.r: redis.Redis
        if self.cluster:  # the probes' commands are the same; the client finds the slots
            nodes = [ClusterNode(h, p) for h, p in cluster_nodes(probe_url or redis_url)]
            probe = ClusterClient(
                startup_nodes=nodes, decode_responses=True, encoding_errors="replace"
            )
            self.r = cast(redis.Redis, probe)
        else:
            self.r = redis.Redis.from_url(
                probe_url or redis_url, decode_responses=True, encoding_errors="replace"
            )
        self.extra_env: dict[str, str] = {}

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(FAST_ENV)
        env["HISCRM_REDIS_URL"] = self.redis_url
        env["HISCRM_KEY_PREFIX"] = self.prefix
        env.update(self.extra_env)
        env.update(extra)
        return env

    def _spawn(
        self, name: str, args: list[str], *, session: bool = False, **env: str
    ) -> subprocess.Popen[bytes]:
        """``session``: in a process group of its own, as a terminal would run it."""
        log = (self.workdir / f"{name}.log").open("ab")
        with log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hiscrm_cli", "--log-level", "debug", *args],
                env=self.env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=session,
            )
        self.procs[name] = proc
        return proc

    def worker(
        self, worker_id: str, *, session: bool = False, **env: str
    ) -> subprocess.Popen[bytes]:
        proc = self._spawn(worker_id, ["worker", "--id", worker_id], session=session, **env)
        wait_for(lambda: self.r.exists(self.keys.worker(worker_id)), what=f"{worker_id} up")
        return proc

    def master(self, master_id: str = "m1", **env: str) -> subprocess.Popen[bytes]:
        proc = self._spawn(master_id, ["master", "--id", master_id], **env)
        # its readers run before its first liveness pass records it
        wait_for(
            lambda: self.r.zscore(self.keys.masters, master_id) is not None,
            what=f"master {master_id} running",
        )
        return proc

    def web(self, name: str = "web", **env: str) -> str:
        """``hiscrm web`` on a free loopback port; its address, once it answers."""
        port = free_port()
        self._spawn(name, ["web", "--port", str(port)], **env)
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            try:
                with urllib.request.urlopen(url + "/signin", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return self.procs[name].poll() is not None  # exited: say so below

        wait_for(answers, what=f"{name} answering on {url}")
        assert self.procs[name].poll() is None, self.log(name)
        return url

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "hiscrm_cli", "--log-level", "warning", *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"hiscrm {' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result

    def add(
        self,
        account_id: str,
        worker: str | None = "w1",
        interval: str = "0.2",
        platform: str = "synthetic",
    ) -> None:
        """``hiscrm account add`` (the synthetic platform needs no browser)."""
        args = ["account", "add", account_id, "--platform", platform, "--interval", interval]
        self.cli(*args, *(["--worker", worker] if worker else []), check=True)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(10)

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    # probes

    def account(self, account_id: str) -> dict[str, str]:
        return self.r.hgetall(self.keys.account(account_id))

    def task(self, worker_id: str, account_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(self.keys.worker(worker_id), "tasks")
        tasks: dict[str, Any] = json.loads(raw) if raw else {}
        return tasks.get(account_id)

    def wait_task(
        self, worker_id: str, account_id: str, state: str, version: int | None = None
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            t = self.task(worker_id, account_id)
            ok = t and t["state"] == state and (version is None or t["applied_version"] >= version)
            return t if ok else None

        return wait_for(probe, what=f"{account_id} {state} on {worker_id} (v{version})")

    def observe(self, worker_id: str, kind: StreamKind) -> str:
        """The worker's ``kind`` stream, kept whole for the test to read: a consumer
        group of the test's own on it means no Master trims what it has handled (it
        trims only streams its group alone reads)."""
        stream = self.keys.worker_stream(worker_id, kind)
        self.r.xgroup_create(stream, "test-observer", id="0", mkstream=True)
        return stream

    def outcomes(self) -> list[dict[str, str]]:
        """Every outcome recorded, oldest first (on a cluster: every bucket's)."""
        entries = [e for b in self.keys.buckets for e in self.r.xrange(self.keys.outcomes(b))]
        entries.sort(key=lambda e: tuple(int(n) for n in e[0].split("-")))
        return [fields for _id, fields in entries]

    def pending_count(self) -> int:
        """Updates pending now (on a cluster: in every bucket)."""
        return sum(int(self.r.zcard(self.keys.pending(b))) for b in self.keys.buckets)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.r.close()


@contextmanager
def running_stack(redis_url: str, prefix: str, workdir: Path) -> Iterator[Stack]:
    stack = Stack(redis_url, prefix, workdir)
    try:
        yield stack
    finally:
        stack.stop_all()
