"""A local Redis Cluster started and stopped by the tests: 3 primaries and 3 replicas of
Debian's redis-server on free loopback ports, joined by ``redis-cli --cluster create``.

Each node has a directory of its own in the work directory (named by its port) with its
``redis.conf``, its ``nodes.conf`` (the cluster's view of it, kept across a restart so
that it comes back as the same node) and its ``redis.log``. A test can kill a node with
SIGKILL, wait until its replica took over, restart it (it rejoins as a replica of the
node that replaced it) and move slots between primaries with ``redis-cli --cluster
reshard``; every such step returns once every live node agrees on the new layout."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as ClusterClient
from redis.retry import Retry

from hiscrm_cli.localcluster import HOST, cluster_url, free_cluster_port
from tests.redis_server import _quoted

POLL_S = 0.02  # polling processes we started; there is no event to await

T = TypeVar("T")


@dataclass(frozen=True)
class NodeInfo:
    """One node as the cluster sees it (a line of CLUSTER NODES)."""

    port: int
    node_id: str
    role: str  # "primary" or "replica"
    primary_id: str | None  # a replica's primary
    slots: tuple[tuple[int, int], ...]  # ranges, both ends included
    failed: bool  # flagged fail or fail? by the node asked

    @property
    def slot_count(self) -> int:
        return sum(end - start + 1 for start, end in self.slots)


def parse_cluster_nodes(text: str) -> list[NodeInfo]:
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, flags = fields[0], fields[1], fields[2].split(",")
        port = int(address.split("@")[0].rsplit(":", 1)[1])
        slots = []
        for field in fields[8:]:
            if field.startswith("["):
                continue  # a slot being imported or migrated
            start, _, end = field.partition("-")
            slots.append((int(start), int(end or start)))
        nodes.append(
            NodeInfo(
                port=port,
                node_id=node_id,
                role="replica" if "slave" in flags else "primary",
                primary_id=None if fields[3] == "-" else fields[3],
                slots=tuple(sorted(slots)),
                failed="fail" in flags or "fail?" in flags,
            )
        )
    return nodes


def command(client: redis.Redis, *args: str) -> Any:
    """``args`` sent as they are, the reply as redis-py gives it back."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _info_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


class RedisCluster:
    """3 primaries + 3 replicas (``replicas`` per primary) on loopback."""

    def __init__(
        self,
        workdir: Path,
        *,
        primaries: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        extra_config: Sequence[str] = (),
    ) -> None:
        """``node_timeout_ms``: how long a node may not answer before the others count
        it failed (a killed primary's replica takes over a second or two after that).
        ``extra_config``: more ``redis.conf`` lines of every node, written after ours."""
        server = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if server is None or cli is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.server_binary = server
        self.cli_binary = cli
        self.workdir = workdir
        self.primary_count = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_config = list(extra_config)
        self.ports: list[int] = []  # in the order given to redis-cli --cluster create
        self.procs: dict[int, subprocess.Popen[bytes]] = {}  # the nodes that run
        self._clients: dict[int, redis.Redis] = {}
        self._ids: dict[int, str] = {}  # port -> node id, known once the cluster exists
        self._layout: list[NodeInfo] = []  # as of the last time every node agreed
        workdir.mkdir(parents=True, exist_ok=True)

    # -- what a test uses ------------------------------------------------------------

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every node, for a cluster client's startup nodes."""
        return [(HOST, port) for port in self.ports]

    @property
    def cluster_url(self) -> str:
        """The ``redis+cluster://`` URL naming every node, as hiscrm takes it."""
        return cluster_url(self.ports)

    @property
    def url(self) -> str:
        """The first node's URL; a cluster client finds the others from it."""
        return f"redis://{HOST}:{self.ports[0]}"

    @property
    def nodes(self) -> list[NodeInfo]:
        """Every node of the cluster as a live node sees it now (a killed node too,
        flagged ``failed`` once the others noticed)."""
        return self._nodes_seen_by(self._live_ports()[0])

    def primaries(self) -> list[int]:
        """The ports of the live primaries that serve slots, in slot order."""
        live = set(self._live_ports())
        serving = [n for n in self.nodes if n.role == "primary" and n.slots and n.port in live]
        return [n.port for n in sorted(serving, key=lambda n: n.slots[0])]

    def replica_of(self, primary: int) -> int:
        """The port of a live replica of the primary on port ``primary``."""
        live = set(self._live_ports())
        nodes = self.nodes
        by_id = {n.node_id: n for n in nodes}
        for node in nodes:
            if (
                node.primary_id is not None
                and node.port in live
                and by_id[node.primary_id].port == primary
            ):
                return node.port
        raise LookupError(f"no live replica of {primary}")

    def node_dir(self, port: int) -> Path:
        return self.workdir / str(port)

    def log_file(self, port: int) -> Path:
        return self.node_dir(port) / "redis.log"

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs.values()]

    def client(self, **options: Any) -> ClusterClient:
        """A redis-py cluster client (sync) of this cluster; the caller closes it."""
        nodes = [
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in self.startup_nodes
        ]
        return ClusterClient(startup_nodes=nodes, **options)

    def node_client(self, port: int) -> redis.Redis:
        """A plain client of one node, owned by the cluster (closed by ``stop``)."""
        client = self._clients.get(port)
        if client is None:
            # no retries inside: the loops that poll a node are the retry, and a node
            # that was killed should fail a command at once
            client = redis.Redis(
                host=HOST,
                port=port,
                decode_responses=True,
                socket_connect_timeout=0.5,
                socket_timeout=5,
                retry=Retry(NoBackoff(), 0),
            )
            self._clients[port] = client
        return client

    # -- life cycle --------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        """Start the nodes, join them into a cluster and wait until every node says
        ``cluster_state:ok`` and every replica's link to its primary is up."""
        deadline = time.monotonic() + timeout
        try:
            self._start_nodes(self.primary_count * (1 + self.replicas), deadline)
            self._create(deadline)
            self._wait_settled(deadline, "the cluster to form")
            self._ids = {n.port: n.node_id for n in self._layout}
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate every node and wait for it. Files stay (logs, nodes.conf)."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        for proc in self.procs.values():
            proc.terminate()
        for port, proc in list(self.procs.items()):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            del self.procs[port]

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``: its connections die, nothing is flushed."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()
        client = self._clients.pop(port, None)
        if client is not None:
            client.close()

    def restart(self, port: int, timeout: float = 30) -> None:
        """Start the node on ``port`` again (stopped first if it runs) with its config
        and nodes.conf: it is the same node. A primary whose replica took over comes
        back as that node's replica. Returns once every node agrees on the layout and
        every replica's link is up."""
        deadline = time.monotonic() + timeout
        if port in self.procs:
            proc = self.procs.pop(port)
            proc.terminate()
            proc.wait(10)
        self._spawn(port)
        self._wait_answers(port, deadline)
        self._wait_settled(deadline, f"{port} to rejoin")

    def wait_failover(self, old_primary: int, timeout: float = 30) -> int:
        """Wait until the replica of the primary that was on ``old_primary`` (killed)
        says it is a primary and every live node says ``cluster_state:ok`` again, that
        is every slot is served. Returns the new primary's port."""
        deadline = time.monotonic() + timeout
        old_id = self._ids[old_primary]
        candidates = [n.port for n in self._layout if n.primary_id == old_id]
        if not candidates:
            raise LookupError(f"{old_primary} had no replica to take over")

        def promoted() -> int | None:
            for port in candidates:
                try:
                    if port in self.procs and self._role(port) == "master":
                        return port
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
            return None

        new_primary = self._poll(promoted, deadline, f"a replica of {old_primary} to take over")
        self._wait_settled(deadline, f"the cluster to recover from losing {old_primary}")
        return new_primary

    def reshard(self, from_port: int, to_port: int, slots: int, timeout: float = 60) -> None:
        """Move ``slots`` slots (and their keys) from the primary on ``from_port`` to
        the one on ``to_port`` with ``redis-cli --cluster reshard``; returns once every
        node agrees on the new owners."""
        deadline = time.monotonic() + timeout
        # redis-cli refuses to reshard a cluster whose nodes do not agree yet
        self._wait_settled(deadline, "the cluster to agree before resharding")
        self._cli(
            [
                "--cluster",
                "reshard",
                f"{HOST}:{from_port}",
                "--cluster-from",
                self._ids[from_port],
                "--cluster-to",
                self._ids[to_port],
                "--cluster-slots",
                str(slots),
                "--cluster-yes",
            ],
            deadline,
        )
        self._wait_settled(deadline, "the nodes to agree on the moved slots")

    def owner_of(self, slot: int) -> int:
        """The port of the live primary that serves ``slot``."""
        for node in self.nodes:
            if node.role == "primary" and any(a <= slot <= b for a, b in node.slots):
                return node.port
        raise LookupError(f"no primary serves slot {slot}")

    def move_slot(self, slot: int, to_port: int, timeout: float = 30) -> None:
        """Move the one slot ``slot`` (and its keys) to the primary on ``to_port`` the
        way ``redis-cli --cluster reshard`` moves each slot (SETSLOT IMPORTING /
        MIGRATING, MIGRATE of its keys, SETSLOT NODE on both ends); returns once every
        node agrees on its new owner."""
        deadline = time.monotonic() + timeout
        self._wait_settled(deadline, "the cluster to agree before moving a slot")
        from_port = self.owner_of(slot)
        if from_port == to_port:
            return
        source, target = self.node_client(from_port), self.node_client(to_port)
        source_id, target_id = self._ids[from_port], self._ids[to_port]
        command(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        command(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        while keys := command(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100"):
            command(source, "MIGRATE", HOST, str(to_port), "", "0", "5000", "KEYS", *keys)
        # the new owner first, as redis-cli does: it then answers for the slot at once
        command(target, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        command(source, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        self._wait_settled(deadline, f"the nodes to agree that {to_port} serves slot {slot}")

    def promote(self, replica: int, timeout: float = 30) -> None:
        """A manual failover (CLUSTER FAILOVER on the replica on port ``replica``): it
        becomes the primary, its primary its replica, with no write lost. Returns once
        every node agrees."""
        deadline = time.monotonic() + timeout
        self._wait_settled(deadline, "the cluster to agree before a failover")
        command(self.node_client(replica), "CLUSTER", "FAILOVER")
        self._poll(
            lambda: True if self._role(replica) == "master" else None,
            deadline,
            f"{replica} to take over from its primary",
        )
        self._wait_settled(deadline, f"the nodes to agree that {replica} is a primary")

    def flush(self) -> None:
        """FLUSHALL on every primary (their replicas follow)."""
        for port in self.primaries():
            self.node_client(port).flushall()

    # -- inside ------------------------------------------------------------------------

    def _config_lines(self, port: int) -> list[str]:
        return [
            f"port {port}",
            f"bind {HOST}",
            f"dir {_quoted(str(self.node_dir(port)))}",
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {self.node_timeout_ms}",
            # a replica may take over however long its link was down
            "cluster-replica-validity-factor 0",
            # a primary left without replicas keeps it so; tests decide the layout
            "cluster-allow-replica-migration no",
            "repl-diskless-sync-delay 0",
            'save ""',
            "appendonly no",
            "daemonize no",
            "loglevel warning",
            *self.extra_config,
        ]

    def _start_nodes(self, count: int, deadline: float) -> None:
        """``count`` fresh nodes; a port taken meanwhile by someone else is replaced."""
        self.ports = []
        for _ in range(count):
            self.ports.append(self._new_port(self.ports))
        for port in self.ports:
            self._spawn(port)
        for i in range(count):
            retries = 2
            while not self._wait_answers(self.ports[i], deadline, raise_on_exit=not retries):
                # it exited: most likely its port (or bus port) was taken since we
                # looked; anything else shows again on a fresh port, and then we say so
                retries -= 1
                self.ports[i] = self._new_port(self.ports)
                self._spawn(self.ports[i])

    def _new_port(self, taken: Sequence[int]) -> int:
        avoid = list(taken)
        while True:
            port = free_cluster_port(avoid)
            if not self.node_dir(port).exists():  # not the port of an earlier node
                return port
            avoid.append(port)

    def _spawn(self, port: int) -> None:
        directory = self.node_dir(port)
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "redis.conf"
        config.write_text("\n".join(self._config_lines(port)) + "\n")
        with self.log_file(port).open("ab") as log:
            self.procs[port] = subprocess.Popen(
                [self.server_binary, str(config)], stdout=log, stderr=subprocess.STDOUT
            )

    def _wait_answers(self, port: int, deadline: float, *, raise_on_exit: bool = True) -> bool:
        """Wait until the node on ``port`` answers PING. False if it exited (and not
        ``raise_on_exit``)."""
        proc = self.procs[port]
        client = self.node_client(port)
        while True:
            try:
                if client.ping():
                    return True
            except redis.ConnectionError:
                pass
            exited = proc.poll() is not None
            if exited and not raise_on_exit:
                proc.wait()
                del self.procs[port]
                return False
            if exited or time.monotonic() > deadline:
                log = self.log_file(port)
                tail = "".join(log.read_text(errors="replace").splitlines(True)[-20:])
                raise RuntimeError(f"redis-server did not start on {port} (see {log}):\n{tail}")
            time.sleep(POLL_S)

    def _cli(self, args: list[str], deadline: float) -> str:
        try:
            done = subprocess.run(
                [self.cli_binary, *args],
                capture_output=True,
                text=True,
                timeout=max(deadline - time.monotonic(), 1),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"redis-cli {' '.join(args)} took too long") from exc
        # redis-cli --cluster reports some failures with exit status 0: "[ERR]" lines
        if done.returncode != 0 or "[ERR]" in done.stdout:
            raise RuntimeError(
                f"redis-cli {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        return done.stdout

    def _create(self, deadline: float) -> None:
        self._cli(
            [
                "--cluster",
                "create",
                *[f"{HOST}:{port}" for port in self.ports],
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            deadline,
        )

    def _live_ports(self) -> list[int]:
        live = [port for port in self.ports if port in self.procs]
        if not live:
            raise RuntimeError("no node of the cluster runs")
        return live

    def _nodes_seen_by(self, port: int) -> list[NodeInfo]:
        text = command(self.node_client(port), "CLUSTER", "NODES")
        return parse_cluster_nodes(text)

    def _role(self, port: int) -> str:
        return str(command(self.node_client(port), "ROLE")[0])

    def _settled_layout(self) -> list[NodeInfo] | None:
        """The layout when every live node says ``cluster_state:ok``, they all agree on
        the live nodes' roles, primaries and slots, and every live replica's link to its
        primary is up; else None."""
        live = self._live_ports()
        views = {}
        try:
            for port in live:
                client = self.node_client(port)
                info = _info_fields(command(client, "CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok":
                    return None
                nodes = self._nodes_seen_by(port)
                views[port] = {
                    (n.port, n.node_id, n.role, n.primary_id, n.slots)
                    for n in nodes
                    if n.port in live
                }
                if len(views[port]) != len(live):
                    return None  # it does not know every live node yet
            if len({frozenset(view) for view in views.values()}) != 1:
                return None
            for port, _, role, _, _ in views[live[0]]:
                if role == "replica":
                    replication = self.node_client(port).info("replication")
                    if replication.get("master_link_status") != "up":
                        return None
        except (redis.ConnectionError, redis.TimeoutError):
            return None
        return nodes

    def _wait_settled(self, deadline: float, what: str) -> None:
        self._layout = self._poll(self._settled_layout, deadline, what)

    def _poll(self, probe: Callable[[], T | None], deadline: float, what: str) -> T:
        while True:
            found = probe()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                logs = ", ".join(str(self.log_file(port)) for port in self.ports)
                raise RuntimeError(f"timed out waiting for {what} (see {logs})")
            time.sleep(POLL_S)


@contextmanager
def running_cluster(cluster: RedisCluster) -> Iterator[RedisCluster]:
    """``cluster`` started for the block, stopped after it."""
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
