"""How a long-running loop lives through failures: back off, log once per episode, go on.

A loop of the Master or the worker must outlive anything Redis or the data can throw
at it: a full Redis (OOM), a paused or restarting one, an error reply, a bug tripped by
one poisoned value. An *episode* is a run of consecutive failures of one loop: its
first failure is logged (with the traceback when it is not a Redis outage), the rest
only counted, and its end is logged with how long it lasted. So a Redis that is full
for a minute costs two log lines per loop, not thousands.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup
from redis import exceptions as rexc
from redis.backoff import ExponentialWithJitterBackoff

from .connection import RECOVERABLE
from .errors import BusUnavailable, Unavailable
from .settings import BusSettings


class Episode:
    """Failure bookkeeping of one loop: backoff delays and one log line per episode."""

    def __init__(self, log: logging.Logger, what: str, settings: BusSettings) -> None:
        self.log = log
        self.what = what
        self.failures = 0
        self.total = 0  # failures over the loop's life, for tests and status
        self._since = 0.0
        self._backoff = ExponentialWithJitterBackoff(
            cap=settings.backoff_max_s, base=settings.backoff_min_s
        )

    def failed(self, exc: BaseException) -> float:
        """Count one failure; returns how long to wait before the next try."""
        self.failures += 1
        self.total += 1
        if self.failures == 1:
            self._since = anyio.current_time()
            if isinstance(exc, Unavailable) and not isinstance(exc, BusUnavailable):
                self.log.warning("%s: %s; retrying", self.what, exc)
            elif isinstance(exc, RECOVERABLE):
                self.log.warning("%s: Redis unavailable (%s); retrying", self.what, exc)
            elif isinstance(exc, rexc.RedisError):
                self.log.warning("%s: Redis refused (%s); retrying", self.what, exc)
            else:
                self.log.error("%s failed; retrying", self.what, exc_info=exc)
        return float(self._backoff.compute(self.failures))

    def ok(self) -> None:
        """The loop's step succeeded: close the episode, if one was open."""
        if self.failures:
            self.log.warning(
                "%s: recovered after %d failure(s) in %.1f s",
                self.what,
                self.failures,
                anyio.current_time() - self._since,
            )
            self.failures = 0


async def every(
    interval: float,
    step: Callable[[], Awaitable[object]],
    episode: Episode,
    *,
    first_delay: float = 0.0,
) -> None:
    """Run ``step`` every ``interval`` seconds forever; no exception ends the loop
    (cancellation does)."""
    await anyio.sleep(first_delay)
    while True:
        try:
            await step()
        except Exception as exc:  # a loop must not die of one bad pass
            await anyio.sleep(max(interval, episode.failed(exc)))
            continue
        episode.ok()
        await anyio.sleep(interval)


@asynccontextmanager
async def side_by_side() -> AsyncIterator[TaskGroup]:
    """A task group that fails with the first failure of its tasks itself, not an
    exception group: its caller handles what one of several reads or writes side by side
    raises (BusUnavailable, NOGROUP) as it would without the group, and a loop backs off
    on it as on any outage."""
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as group:
        raise _first_failure(group) from None


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    cancelled = anyio.get_cancelled_exc_class()
    found: BaseException | None = None
    for exc in group.exceptions:
        inner = _first_failure(exc) if isinstance(exc, BaseExceptionGroup) else exc
        if not isinstance(inner, cancelled):
            return inner
        found = found or inner
    return found or group
