"""Commands run on every node of a Redis Cluster, replicas too, one round trip each:
for what a cluster does not spread by itself (ACL users: neither replicated nor passed
over the cluster bus)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster

from .connection import call, call_each
from .errors import BusUnavailable

log = logging.getLogger(__name__)

Command = tuple[str | bytes, ...]


_DOWN_FLAGS = {"fail", "handshake", "noaddr"}


@asynccontextmanager
async def cluster_nodes(redis: Redis) -> AsyncIterator[list[ClusterNode]]:
    """Every node of the cluster ``redis`` is a client of, primaries and replicas, as
    CLUSTER NODES lists them now (but those known to have failed), for the block.

    redis-py's map of the cluster comes from CLUSTER SLOTS, which Redis 7.0 lists a
    replica in only once it has replicated some data, and is reloaded only after an
    error: a node missing from it gets connections of its own here, closed after the
    block (reloading the client's map would make every connection of it reconnect)."""
    cluster = cast(RedisCluster, redis)
    await call(cluster.initialize())
    listed: Any = await call(cluster.cluster_nodes())
    nodes: list[ClusterNode] = []
    own: list[ClusterNode] = []
    for address, info in sorted(listed.items()):
        host, _sep, port = str(address).rpartition(":")
        if not host or not port.isdigit() or _DOWN_FLAGS & set(info["flags"].split(",")):
            continue
        node = cluster.get_node(host=host, port=int(port))
        if node is None:
            node = ClusterNode(host, int(port), **cluster.nodes_manager.connection_kwargs)
            own.append(node)
        nodes.append(node)
    try:
        yield nodes
    finally:
        # and a node the client dropped from its map meanwhile (a failover, a reload
        # after an error): the client no longer closes what we opened on it
        dropped = [n for n in nodes if cluster.get_node(node_name=n.name) is not n]
        with anyio.CancelScope(shield=True):
            for node in {*own, *dropped}:
                await node.disconnect()


async def on_node(node: ClusterNode, commands: Sequence[Command]) -> list[Any]:
    """``commands`` on one cluster node in one round trip; an error reply is returned
    in its command's place, a lost connection raises BusUnavailable."""
    batch = [PipelineCommand(i, *c) for i, c in enumerate(commands)]
    if not batch:
        return []

    async def run() -> list[Any]:
        # a connection lost while reading comes back as the replies' errors
        await node.execute_pipeline(batch)
        return [c.result for c in batch]

    return await call_each(run())


async def on_each(
    nodes: Sequence[ClusterNode], commands: Callable[[ClusterNode], Sequence[Command]]
) -> dict[str, list[Any] | BusUnavailable]:
    """Node name → its replies to ``commands(node)``, every node at once; a node that
    cannot be reached (down, or refusing our login) gets its BusUnavailable instead."""
    out: dict[str, list[Any] | BusUnavailable] = {}

    async def one(node: ClusterNode) -> None:
        # a node that restarted since the last call fails the first command on each
        # connection the client kept: once more then (our commands may be repeated),
        # but not after a timeout, which would only double the wait for a lost node
        for attempt in (1, 2):
            try:
                out[node.name] = await on_node(node, commands(node))
                return
            except BusUnavailable as exc:
                out[node.name] = exc
                log.debug("node %s, attempt %d: %s", node.name, attempt, exc)
                if isinstance(exc.__cause__, TimeoutError | rexc.TimeoutError):
                    return

    async with anyio.create_task_group() as tg:
        for node in nodes:
            tg.start_soon(one, node)
    return out
