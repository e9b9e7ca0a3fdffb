"""A Redis Cluster on this machine, of Debian's ``redis-server``: 3 primaries and 3
replicas on loopback, joined by ``redis-cli --cluster create``. ``hiscrm up --cluster``
runs one for people to try; the tests start theirs with the same ports and settings.

A node's cluster bus listens on its port + 10000, so a node's port P must be free
together with P + 10000, and both are taken below the kernel's range of ports for
outgoing connections when there is room: nothing else can take them, not even while a
node is down."""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"
BUS_PORT_OFFSET = 10000
NODES = 6  # 3 primaries, each with 1 replica
REPLICAS = 1

_random = random.SystemRandom()  # not the random module's state, which tests may seed


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (and for bind to port 0)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_cluster_port(taken: Sequence[int] = ()) -> int:
    """A loopback port P that is free with its bus port P + 10000, neither of them in
    ``taken`` (nor the bus port of a port in it); below the ephemeral range when there
    is room (with Linux's default, P in 10000-22767)."""
    blocked = set(taken) | {p + BUS_PORT_OFFSET for p in taken}
    ephemeral_low, _ = _ephemeral_ports()
    highest = ephemeral_low - 1 - BUS_PORT_OFFSET
    lowest = 10000
    for _ in range(1000):
        if highest - lowest >= 1000:
            port = _random.randint(lowest, highest)
        else:  # a kernel with a wide ephemeral range: take one of its ports
            with socket.socket() as s:
                s.bind((HOST, 0))
                port = int(s.getsockname()[1])
        bus = port + BUS_PORT_OFFSET
        if bus > 65535 or {port, bus} & blocked:
            continue
        if port_is_free(port) and port_is_free(bus):
            return port
    raise RuntimeError("no free loopback port P with P + 10000 free too")


def cluster_ports(wanted: Sequence[int] = (), taken: Sequence[int] = ()) -> list[int]:
    """NODES ports for a cluster: ``wanted`` (an earlier run's) when they are all free
    with their bus ports, else new ones; none of them, nor their bus ports, in ``taken``
    (ports the caller is about to use itself)."""
    bus = {p + BUS_PORT_OFFSET for p in wanted}
    if (
        len(set(wanted)) == NODES
        and all(0 < p <= 65535 - BUS_PORT_OFFSET for p in wanted)
        and not ({*wanted, *bus} & set(taken))
        and all(port_is_free(p) and port_is_free(p + BUS_PORT_OFFSET) for p in wanted)
    ):
        return list(wanted)
    ports: list[int] = []
    while len(ports) < NODES:
        ports.append(free_cluster_port([*taken, *ports]))
    return ports


def quoted(value: str) -> str:
    """``value`` as one argument of a redis.conf line."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_config(
    port: int, data_dir: Path, *, password: str = "", node_timeout_ms: int = 2000
) -> str:
    """The redis.conf of one node: loopback only, its own data directory, cluster mode;
    with ``password``, required of clients and of its replicas' link to it."""
    lines = [
        f"port {port}",
        f"bind {HOST}",
        "protected-mode yes",
        f"dir {quoted(str(data_dir))}",
        "cluster-enabled yes",
        "cluster-config-file nodes.conf",
        f"cluster-node-timeout {node_timeout_ms}",
        "appendonly yes",
        'save ""',
        "proto-max-bulk-len 8mb",  # as the one Redis of `hiscrm up` and the stack
        "daemonize no",
    ]
    if password:
        lines += [f"requirepass {password}", f"masterauth {password}"]
    return "\n".join(lines) + "\n"


def create_args(cli: str, ports: Sequence[int], replicas: int = REPLICAS) -> list[str]:
    """The ``redis-cli --cluster create`` command joining ``ports`` (the password, if
    any, goes in REDISCLI_AUTH, never on the command line)."""
    nodes = [f"{HOST}:{port}" for port in ports]
    return [
        cli,
        "--cluster",
        "create",
        *nodes,
        "--cluster-replicas",
        str(replicas),
        "--cluster-yes",
    ]


def cluster_url(ports: Sequence[int]) -> str:
    """The ``redis+cluster://`` URL naming every node."""
    return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in ports) + "/"
