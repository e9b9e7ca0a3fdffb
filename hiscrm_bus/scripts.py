"""Many Lua script calls (or publishes) in one round trip, on one Redis or a Redis Cluster.

On one Redis the calls go in one pipeline: one connection runs them in order. redis-py's
cluster pipeline refuses EVALSHA and the publish commands, so on a cluster the calls are
grouped by the primary that owns their keys' slot and each group goes as one pipeline on
one connection of its node (``hiscrm_bus.nodes.on_node``): one round trip per node, all
nodes at once, in order within a node but in no given order across nodes. A caller that
needs one call done before another (an update recorded before it is published) awaits
the first batch before sending the second.

A cluster replicates asynchronously: a primary that dies right after answering takes
with it what its replica had not received yet. ``durable`` calls (the writes of config
updates and their pending records) are therefore sent, per node, on one connection
followed by ``WAIT 1``: they return once a replica has them too (or after
``REPLICA_WAIT_MS``, with a warning, when no replica answers in time), so a failover
right after cannot take back an update the caller was told about.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript

from .connection import call, call_each, is_cluster
from .errors import Unavailable
from .nodes import on_node
from .resilience import side_by_side

log = logging.getLogger(__name__)

# calls in flight at once on a cluster: within redis-py's default pool per node
CONCURRENCY = 64
ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[Any]]
# how long a durable write waits for a replica of its primary to have it
REPLICA_WAIT_MS = 1000
_ATTEMPTS = 3  # a moved slot or an unloaded script: send those calls again
_UNSENT = object()  # a call's place before its reply


async def run_scripts(
    redis: Redis, calls: Sequence[ScriptCall], *, each_error: bool = False, durable: bool = False
) -> list[Any]:
    """The replies of ``calls`` (script, keys, args), in order. ``each_error``: one
    call's error reply is its result instead of the whole batch's exception (an outage
    is still everyone's: BusUnavailable). ``durable``: on a cluster, return once a
    replica has the writes too (see above)."""
    if not calls:
        return []
    if is_cluster(redis) and (durable or each_error or len(calls) > 1):
        results = await _per_node(cast(RedisCluster, redis), calls, wait=durable)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors and not each_error:
            raise errors[0]
        return results
    if len(calls) == 1 and not each_error:
        script, keys, args = calls[0]
        return [await call(script(keys=keys, args=args))]
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            await script(keys=keys, args=args, client=pipe)
        if each_error:
            return await call_each(pipe.execute(raise_on_error=False))
        return list(await call(pipe.execute()))


async def publish_each(redis: Redis, messages: Sequence[tuple[str, bytes | str]]) -> list[int]:
    """Publish each (channel, payload), in order on one Redis (PUBLISH, pipelined); on a
    cluster as shard messages (SPUBLISH, to the node owning each channel). Returns how
    many subscribers got each."""
    if not messages:
        return []
    if is_cluster(redis) and len(messages) > 1:
        return await _spublish_per_node(cast(RedisCluster, redis), messages)
    if is_cluster(redis):
        (channel, payload) = messages[0]
        return [int(await call(redis.spublish(channel, payload)))]
    if len(messages) == 1:
        channel, payload = messages[0]
        return [int(await call(redis.publish(channel, payload)))]
    async with redis.pipeline(transaction=False) as pipe:
        for channel, payload in messages:
            pipe.publish(channel, payload)
        return [int(r) for r in await call(pipe.execute())]


async def _by_primary(
    cluster: RedisCluster, keys: dict[int, str]
) -> dict[str, tuple[ClusterNode, list[int]]]:
    """The indexes of ``keys`` (index -> a key of that call) grouped by the primary that
    serves the key's slot, as the client's map has it. A key no primary serves is left
    out: the plain way, which the callers fall back to, reports it."""
    await call(cluster.initialize())
    groups: dict[str, tuple[ClusterNode, list[int]]] = {}
    for index, key in keys.items():
        node = cluster.get_node_from_key(key)
        if node is not None:
            groups.setdefault(node.name, (node, []))[1].append(index)
    return groups


async def _spublish_per_node(
    cluster: RedisCluster, messages: Sequence[tuple[str, bytes | str]]
) -> list[int]:
    """SPUBLISH of each message, grouped per primary owning its channel's slot, one
    pipeline per node, all nodes at once; a message a node answers MOVED or ASK for
    (its slot just moved) is published again the plain way, which follows redirects."""
    groups = await _by_primary(cluster, {i: channel for i, (channel, _m) in enumerate(messages)})
    results: list[Any] = [_UNSENT] * len(messages)

    async def one(node: ClusterNode, indexes: list[int]) -> None:
        commands = [("SPUBLISH", *messages[i]) for i in indexes]
        for index, reply in zip(indexes, await on_node(node, commands), strict=True):
            if not isinstance(reply, rexc.AskError):  # MovedError is an AskError too
                results[index] = reply

    async with side_by_side() as tg:  # a node out of reach fails the batch, as one Redis would
        for node, indexes in groups.values():
            tg.start_soon(one, node, indexes)
    rest = [i for i, r in enumerate(results) if r is _UNSENT]
    if rest:
        client = cast(Redis, cluster)  # the plain calls take either client
        again = await concurrently([_spublish_thunk(client, *messages[i]) for i in rest])
        for index, reply in zip(rest, again, strict=True):
            results[index] = reply
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    return [int(r) for r in results]


async def concurrently(
    thunks: Sequence[Callable[[], Awaitable[Any]]], *, each_error: bool = False
) -> list[Any]:
    """Await every thunk's call (through :func:`call`), at most CONCURRENCY at once, and
    return the results in order. ``each_error``: an error reply (not an outage) is that
    call's result; otherwise the first error is raised once all calls ended."""
    results: list[Any] = [None] * len(thunks)
    limit = anyio.Semaphore(CONCURRENCY)

    async def one(index: int, thunk: Callable[[], Awaitable[Any]]) -> None:
        async with limit:
            try:
                results[index] = await call(thunk())
            except Exception as exc:
                results[index] = exc

    async with anyio.create_task_group() as tg:
        for index, thunk in enumerate(thunks):
            tg.start_soon(one, index, thunk)
    # an outage (call() made it an Unavailable) is everyone's; an error reply is its
    # call's own, or without each_error the batch's
    errors = [r for r in results if isinstance(r, Exception)]
    for error in errors:
        if isinstance(error, Unavailable):
            raise error
    if errors and not each_error:
        raise errors[0]
    return results


def _script_thunk(
    script: AsyncScript, keys: Sequence[str], args: Sequence[Any]
) -> Callable[[], Awaitable[Any]]:
    return lambda: script(keys=keys, args=args)


def _spublish_thunk(
    redis: Redis, channel: str, payload: bytes | str
) -> Callable[[], Awaitable[Any]]:
    return lambda: redis.spublish(channel, payload)


async def _per_node(cluster: RedisCluster, calls: Sequence[ScriptCall], *, wait: bool) -> list[Any]:
    """``calls`` as EVALSHA, grouped per primary, each group on one connection of its node
    (with ``wait``, followed by WAIT 1): the replies (error replies in place), with
    ``wait`` once a replica has the writes. A call whose slot moved, or whose script the
    node does not have, is sent again; what still does not land goes the plain way
    (which follows ASK redirects during a slot's migration itself)."""
    results: list[Any] = [_UNSENT] * len(calls)
    todo = list(range(len(calls)))
    for _attempt in range(_ATTEMPTS):
        groups = await _by_primary(cluster, {i: calls[i][1][0] for i in todo})
        rounds = [_Round(n, indexes, calls, results, wait=wait) for n, indexes in groups.values()]
        async with side_by_side() as tg:  # a node out of reach fails the batch
            for round_ in rounds:
                tg.start_soon(round_.run)
        missing = {script for r in rounds for script in r.missing}
        for script in missing:  # Redis forgets scripts on restart; a new primary never had them
            await call(cluster.script_load(script.script))
        if any(r.moved for r in rounds):
            await call(cluster.nodes_manager.initialize())
        todo = [i for i in todo if results[i] is _UNSENT]
        if not todo:
            return results
    rest = await concurrently([_script_thunk(*calls[i]) for i in todo], each_error=True)
    for index, reply in zip(todo, rest, strict=True):
        results[index] = reply
    return results


class _Round:
    """One node's share of a batch: its EVALSHAs (and a WAIT), on one connection."""

    def __init__(
        self,
        node: ClusterNode,
        indexes: list[int],
        calls: Sequence[ScriptCall],
        results: list[Any],
        *,
        wait: bool,
    ) -> None:
        self.node = node
        self.indexes = indexes
        self.calls = calls
        self.results = results  # the batch's, filled at this node's indexes
        self.wait = wait
        self.missing: set[AsyncScript] = set()
        self.moved = False

    async def run(self) -> None:
        calls, results = self.calls, self.results
        commands = [_evalsha(calls[i]) for i in self.indexes]
        if self.wait:
            commands.append(("WAIT", "1", str(REPLICA_WAIT_MS)))
        replies = await on_node(self.node, commands)
        landed = 0
        for index, reply in zip(self.indexes, replies, strict=False):
            if isinstance(reply, rexc.NoScriptError):
                self.missing.add(calls[index][0])
            elif isinstance(reply, rexc.MovedError | rexc.AskError):
                self.moved = True
            else:
                results[index] = reply
                landed += 1
        acked = replies[-1] if self.wait else None
        if landed and isinstance(acked, int) and acked < 1:
            log.warning(
                "no replica of %s confirmed %d write(s) within %d ms: a failover now could "
                "lose them",
                self.node.name,
                landed,
                REPLICA_WAIT_MS,
            )


def _evalsha(script_call: ScriptCall) -> tuple[str, ...]:
    script, keys, args = script_call
    return ("EVALSHA", str(script.sha), str(len(keys)), *keys, *args)
