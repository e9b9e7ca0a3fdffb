"""Shared pieces: a private redis-server (and PostgreSQL), timing, statistics, setup helpers."""

from __future__ import annotations

import itertools
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import redis
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.cluster import RedisCluster as SyncCluster

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.connection import connect
from hiscrm_bus.messages import MAX_ACKS_PER_MESSAGE
from hiscrm_bus.pending import PendingTracker
from hiscrm_bus.settings import cluster_nodes, is_cluster_url
from hiscrm_master.updates import Updates
from hiscrm_worker.service import Worker
from hiscrm_worker.settings import WorkerSettings

if TYPE_CHECKING:
    from tests.postgres_server import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SECTION = "## Delivery (DESIGN.md §7)"
CLUSTER_SECTION = "## Redis Cluster (issue 13)"
INGEST_SECTION = "## Crawled data: ingest and Redis memory (issue 16)"
CELERY_VENV = ROOT / "var" / "bench" / "celery-venv"
CELERY = ("celery[redis]",)
# the packages a benchmark measures
LIBRARY = ("hiscrm_bus", "hiscrm_master", "hiscrm_worker", "pyproject.toml")
now = time.perf_counter
_prefixes = itertools.count()


# ----------------------------------------------------------------------------- helpers


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A private, non-persistent redis-server on a free loopback port for the run,
    started by the tests' own starter (tests/redis_server.py); yields its URL."""
    try:
        from tests.redis_server import RedisServer, running
    except ImportError as exc:
        raise SystemExit(f"tests/redis_server.py is not importable ({exc})") from None
    try:
        server = RedisServer(workdir)
    except RuntimeError as exc:  # not installed
        raise SystemExit(str(exc)) from None
    with running(server):
        yield server.url


@contextmanager
def redis_cluster(workdir: Path) -> Iterator[str]:
    """A private local Redis Cluster (3 primaries + 3 replicas, tests/redis_cluster.py)
    for the run; yields the ``redis+cluster://`` URL naming every node."""
    try:
        from tests.redis_cluster import RedisCluster, running_cluster
    except ImportError as exc:
        raise SystemExit(f"tests/redis_cluster.py is not importable ({exc})") from None
    try:
        cluster = RedisCluster(workdir / "cluster")
    except RuntimeError as exc:  # not installed
        raise SystemExit(str(exc)) from None
    with running_cluster(cluster):
        yield cluster.cluster_url


def raw_client(url: str) -> Redis:
    """The floors' bare redis-py client: ``Redis`` for one Redis, the asyncio
    ``RedisCluster`` (typed as ``Redis``) for a cluster URL."""
    if not is_cluster_url(url):
        return Redis.from_url(url)
    nodes = [ClusterNode(h, p) for h, p in cluster_nodes(url)]
    return cast(Redis, AsyncCluster(startup_nodes=nodes))


async def node_client_for(cluster: Redis, key: str) -> Redis:
    """A plain client of the primary serving ``key``'s slot (for SSUBSCRIBE)."""
    rc = cast(AsyncCluster, cluster)
    await rc.initialize()
    node = rc.get_node_from_key(key)
    assert node is not None
    return Redis(host=node.host, port=int(node.port))


class Flush:
    """FLUSHALL between scenarios: on one Redis, or on every primary of a cluster."""

    def __init__(self, url: str) -> None:
        self.cluster = is_cluster_url(url)
        if self.cluster:
            host, port = cluster_nodes(url)[0]  # the client finds the others from one
            self.client: Any = SyncCluster(host=host, port=port)
        else:
            self.client = redis.Redis.from_url(url)

    def flushall(self) -> None:
        if self.cluster:
            self.client.flushall(target_nodes=SyncCluster.PRIMARIES)
        else:
            self.client.flushall()

    def close(self) -> None:
        self.client.close()


# PostgreSQL as Debian installs it runs durably: the tests' throwaway settings (no
# fsync, no synchronous commit, no full-page writes) undone
POSTGRES_DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Debian's PostgreSQL on a free loopback port for the run, started by the tests'
    own starter (tests/postgres_server.py: the newest /usr/lib/postgresql/<N>, a
    cluster in a fresh directory on /dev/shm when roomy, as root run as ``postgres``)
    with production durability; stopped and removed after. RuntimeError when
    PostgreSQL is not installed (or the tests' starter is not importable: run from the
    repository's root)."""
    try:
        from tests.postgres_server import PostgresServer
    except ImportError as exc:
        raise RuntimeError(f"tests/postgres_server.py is not importable ({exc})") from None

    server = PostgresServer(settings=POSTGRES_DURABLE)
    server.start()
    try:
        yield server
    finally:
        server.remove()


def prefix(name: str) -> str:
    return f"bench{next(_prefixes)}-{name}:"


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 500 samples is the 495th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def dist(values_s: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean / max in milliseconds, from seconds."""
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50": quantile(ms, 0.50),
        "p99": quantile(ms, 0.99),
        "mean": sum(ms) / len(ms) if ms else math.nan,
        "max": max(ms) if ms else math.nan,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


async def wait_until(probe: Callable[[], bool], within_s: float, what: str) -> None:
    """Poll an in-process condition (a worker's task table, a counter) for a while."""
    try:
        with anyio.fail_after(within_s):
            while not probe():  # noqa: ASYNC110 - the state polled has no event to wait on
                await anyio.sleep(0.005)
    except TimeoutError:
        raise RuntimeError(f"timed out after {within_s} s waiting for {what}") from None


async def aclose_all(*clients: Any) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        for client in clients:
            with suppress(Exception):  # closing after a failure; nothing to add
                await client.aclose()


class LogTally(logging.Handler):
    """Prints the first few WARNING+ records of each kind, counts all of them."""

    def __init__(self, show: int = 3) -> None:
        super().__init__(logging.WARNING)
        self.show = show
        self.counts: Counter[tuple[str, str]] = Counter()
        self.setFormatter(logging.Formatter("  [log] %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, str(record.msg))
        self.counts[key] += 1
        if self.counts[key] <= self.show:
            sys.stderr.write(self.format(record) + "\n")

    def since(self, before: Counter[tuple[str, str]]) -> Counter[tuple[str, str]]:
        return self.counts - before


def matching(counts: Counter[tuple[str, str]], needle: str) -> int:
    return sum(n for (_name, msg), n in counts.items() if needle in msg)


async def redis_cpu_s(client: Any) -> float:
    """CPU seconds the redis-server has used so far (user + system, INFO cpu): a run's
    difference is what its work cost Redis, the one part no added process can share.
    On a cluster: the sum over every node, primaries and replicas."""
    if isinstance(client, AsyncCluster):
        return sum((await redis_cpu_nodes(client)).values())
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def redis_cpu_nodes(client: Any) -> dict[str, float]:
    """A cluster's CPU seconds so far per node, ``"host:port primary|replica"``."""
    cluster = cast(AsyncCluster, client)
    out: dict[str, float] = {}
    for node in cluster.get_nodes():
        info = await cluster.info("cpu", target_nodes=node)
        role = "primary" if node.server_type == "primary" else "replica"
        out[f"{node.name} {role}"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return out


async def send_rounds(
    updates: Updates, current: dict[str, dict[str, Any]], accounts: Sequence[str], total: int
) -> None:
    """``total`` updates in rounds of one ``change_many`` over ``accounts`` (a new name each
    round), as a caller that knows the version it wrote: ``current`` (each account's
    decoded hash) is kept up to date from the results. Raises if any write is refused."""
    sent = rnd = 0
    while sent < total:
        chunk = accounts[: min(len(accounts), total - sent)]
        batch = {a: (current[a], {"name": f"r{rnd}"}) for a in chunk}
        results, notices = await updates.change_many(batch, "admin_update")
        for account_id, result in zip(chunk, results, strict=True):
            if isinstance(result, Exception):
                raise RuntimeError(f"change_many refused: {result}")  # noqa: TRY004
            current[account_id] = {
                **current[account_id],
                "name": f"r{rnd}",
                "config_version": str(result.version),
            }
        sent += sum(1 for m in notices if m is not None)
        rnd += 1


class OutcomeCount:
    """Counts the outcomes recorded after a cursor until ``total`` have ended; run
    :meth:`run` as a task (``await tg.start(count.run, tracker, after)``)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.statuses: Counter[str] = Counter()
        self.done = anyio.Event()
        self.done_at = 0.0  # when the last one was seen (``now()``), 0 until then

    async def run(
        self, tracker: PendingTracker, after: str, *, task_status: Any = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async with tracker.outcome_feed(after) as outcomes:
            async for outcome in outcomes:
                self.statuses[outcome.status] += 1
                if sum(self.statuses.values()) >= self.total:
                    self.done_at = now()
                    self.done.set()
                    return


def start_up_acks(owner: Mapping[str, str]) -> int:
    """The ACK stream entries the Master reads once every worker has reconciled the
    accounts ``owner`` gives it (account -> worker): one per 1,000 of a worker's accounts."""
    per_worker = Counter(owner.values())
    return sum(-(-n // MAX_ACKS_PER_MESSAGE) for n in per_worker.values())


async def create_accounts(
    updates: Updates, owner: Mapping[str, str | None], *, as_cli: bool = False
) -> None:
    """Every account of ``owner`` (account -> its worker) created, sixteen at a time
    (setup, not measured): by the store alone, or ``as_cli`` as ``hiscrm account add``
    does (the owner told, the update tracked)."""
    todo = iter(owner.items())

    async def lane() -> None:
        for account_id, worker_id in todo:
            config = AccountConfig(id=account_id, platform="synthetic", worker_id=worker_id)
            await (updates.create(config) if as_cli else updates.store.create(config))

    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(lane)


async def synthetic_workers(
    url: str, key_prefix: str, data_dir: Path, worker_ids: Sequence[str]
) -> tuple[list[Worker], list[Redis]]:
    """Workers of the synthetic platform (not started), and the clients they use."""
    fleet: list[Worker] = []
    clients: list[Redis] = []
    for wid in worker_ids:
        settings = WorkerSettings(
            redis_url=url,
            key_prefix=key_prefix,
            worker_id=wid,
            platforms=("synthetic",),
            data_dir=data_dir / wid,
        )
        client = await connect(settings)
        clients.append(client)
        fleet.append(Worker(settings, client))
    return fleet, clients


def time_calls(obj: Any, names: Sequence[str], spent: dict[str, float]) -> None:
    """Instrumentation: wrap async methods of one instance to add up their wall time."""
    for name in names:
        method = getattr(obj, name)

        async def timed(*a: Any, _m: Any = method, _n: str = name, **kw: Any) -> Any:
            t = now()
            try:
                return await _m(*a, **kw)
            finally:
                spent[_n] = spent.get(_n, 0.0) + now() - t

        setattr(obj, name, timed)


def hiredis_available() -> bool:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True


def reexec_with_hiredis() -> None:
    """Run this script again with hiredis importable, without touching the project venv."""
    target = ROOT / "var" / "bench" / "hiredis"
    if os.environ.get("HISCRM_BENCH_HIREDIS_PATH"):
        raise SystemExit(f"hiredis is still not importable from {target}")
    if not any(target.glob("hiredis*")):
        print("installing hiredis into var/bench/hiredis …", flush=True)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "--target", str(target), "hiredis"], check=True, timeout=300)
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, HISCRM_BENCH_HIREDIS_PATH=str(target))
    os.chdir(ROOT)
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.delivery", *sys.argv[1:]], env)


def describe_revision(paths: Sequence[str] = LIBRARY) -> str:
    """The commit measured, and whether the library differed from it in the work tree."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=ROOT)
        return done.stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    if not head:
        return "no git revision"
    changed = [line[3:] for line in git("status", "--porcelain", "--", *paths).splitlines()]
    named = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"`{head}`" + (f" (with uncommitted changes to {named})" if changed else "")


def describe_machine() -> str:
    version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    server = version[2].removeprefix("v=") if len(version) > 2 else "?"
    if hiredis_available():
        import hiredis

        parser = f", hiredis {hiredis.__version__}"
    else:
        parser = " (no hiredis)"
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, redis-server {server}, "
        f"redis-py {redis.__version__}{parser}"
    )


@dataclass
class Hosts:
    """Host processes (of workers, or of bare subscribers), once every one is ready."""

    start_s: float  # how long they took to be ready
    pids: list[int]

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the hosts have used so far."""
        return sum(process_cpu_s(pid) for pid in self.pids)


def process_cpu_s(pid: int) -> float:
    """A live process's CPU seconds so far, from /proc (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def host_processes(module: str, argvs: Sequence[Sequence[str]]) -> AsyncIterator[Hosts]:
    """One ``python -m module *argv`` process per argv (a host of workers or of bare
    subscribers); yields once every one printed ``ready``, terminates them on exit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    procs: list[subprocess.Popen[str]] = []
    t0 = now()
    try:
        for argv in argvs:
            cmd = [sys.executable, "-m", module, *argv]
            procs.append(
                # starting a process is quick; its readiness is awaited below
                subprocess.Popen(  # noqa: ASYNC220
                    cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
                )
            )

        async def ready(proc: subprocess.Popen[str]) -> None:
            assert proc.stdout is not None
            line = await anyio.to_thread.run_sync(proc.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError(f"{module} exited ({proc.poll()}) before it was ready")

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for proc in procs:
                    tg.start_soon(ready, proc)
        yield Hosts(now() - t0, [proc.pid for proc in procs])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def ready_until_signalled() -> None:
    """A host process's life once its work runs: say ``ready`` on standard output (what
    :func:`host_processes` waits for), then return on SIGTERM or SIGINT."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return
