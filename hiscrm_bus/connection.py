"""Redis clients, and the one place redis-py connection errors become BusUnavailable."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from .errors import BusUnavailable
from .settings import BusSettings

T = TypeVar("T")
# errors that mean "Redis is not there right now", as opposed to a bad command
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    ConnectionError,
    OSError,
    TimeoutError,
)
# what a resilient loop survives by backing off and starting over
RECOVERABLE: tuple[type[BaseException], ...] = (BusUnavailable, *CONNECTION_ERRORS)


async def call(value: Awaitable[T]) -> T:
    """Await a redis-py call, translating connection failures to BusUnavailable."""
    try:
        return await value
    except CONNECTION_ERRORS as exc:
        raise BusUnavailable(f"Redis is unreachable: {exc}") from exc


def make_client(settings: BusSettings, *, retries: bool = True) -> Redis:
    """A client for ``settings.redis_url``.

    ``retries=False`` is for loops that run their own reconnect logic (the control
    subscription): a failure must surface at once so the loop can reconcile.
    """
    retry = (
        Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3)
        if retries
        else Retry(NoBackoff(), 0)
    )
    try:
        return Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            # every blocking read we issue blocks for at most a second or two, so a
            # read that takes longer means a dead path, not a slow answer
            socket_timeout=settings.redis_timeout_s,
            retry=retry,
            health_check_interval=0,
        )
    except ValueError as exc:
        raise BusUnavailable(f"Redis URL {settings.redis_url!r} is not valid: {exc}") from exc


async def connect(settings: BusSettings) -> Redis:
    """A client that has answered PING, or BusUnavailable with one clear sentence."""
    client = make_client(settings)
    try:
        await call(client.ping())
    except BusUnavailable:
        await client.aclose()
        raise BusUnavailable(
            f"Cannot reach Redis at {settings.redis_url} "
            "(is redis-server running? set HISCRM_REDIS_URL or --redis-url)"
        ) from None
    except rexc.RedisError as exc:
        await client.aclose()
        raise BusUnavailable(f"Redis at {settings.redis_url} refused us: {exc}") from exc
    return client
