"""Many Lua script calls (or publishes) in one round trip, on one Redis or a Redis Cluster.

On one Redis the calls go in one pipeline: one connection runs them in order. redis-py's
cluster pipeline refuses EVALSHA and the publish commands, so on a cluster the calls run
concurrently instead, each straight to the node that owns its keys' slot (at most
``CONCURRENCY`` at once): one round trip per node, in parallel, but in no given order
across calls. A caller that needs one call done before another (an update recorded
before it is published) awaits the first batch before sending the second.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from .connection import call, call_each, is_cluster
from .errors import Unavailable

# calls in flight at once on a cluster: within redis-py's default pool per node
CONCURRENCY = 64
ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[Any]]


async def run_scripts(
    redis: Redis, calls: Sequence[ScriptCall], *, each_error: bool = False
) -> list[Any]:
    """The replies of ``calls`` (script, keys, args), in order. ``each_error``: one
    call's error reply is its result instead of the whole batch's exception (an outage
    is still everyone's: BusUnavailable)."""
    if not calls:
        return []
    if len(calls) == 1 and not each_error:
        script, keys, args = calls[0]
        return [await call(script(keys=keys, args=args))]
    if is_cluster(redis):
        return await concurrently(
            [_script_thunk(script, keys, args) for script, keys, args in calls],
            each_error=each_error,
        )
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
    if is_cluster(redis):
        replies = await concurrently(
            [_spublish_thunk(redis, channel, payload) for channel, payload in messages]
        )
        return [int(r) for r in replies]
    if len(messages) == 1:
        channel, payload = messages[0]
        return [int(await call(redis.publish(channel, payload)))]
    async with redis.pipeline(transaction=False) as pipe:
        for channel, payload in messages:
            pipe.publish(channel, payload)
        return [int(r) for r in await call(pipe.execute())]


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
