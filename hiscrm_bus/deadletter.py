"""The dead-letter streams: every message that failed to decode or was refused, with
why, and a count.

The Masters' own dead letters (undecodable entries, refused messages) go to
``deadletter``; what a worker reports it could not decode goes to
``deadletter:reported``, so a worker flooding reports cannot evict the others. Counts
are kept per source stream or channel (a worker's reports under its control channel,
the one it reports about): never by a name the worker chose. A worker's reports are
kept up to ``REPORTS_PER_MINUTE`` a minute; the rest are only counted (told once per
worker and minute).
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import anyio
from redis.asyncio import Redis

from .connection import call, text
from .keys import Keys
from .limits import clip, utcnow
from .messages import DecodeError
from .settings import BusSettings

log = logging.getLogger(__name__)
# a worker's reports one Master keeps per minute (a real decode problem shows in far
# fewer; the count goes on past it)
REPORTS_PER_MINUTE: Final = 100


class DeadLetterWriter(Protocol):
    """Where a loop puts what it could not decode."""

    async def write(self, source: str, error: DecodeError) -> None: ...


class DeadLetters:
    def __init__(self, redis: Redis, settings: BusSettings) -> None:
        self.redis = redis
        self.keys: Keys = settings.keys
        self.maxlen = settings.deadletter_maxlen
        self.raw_bytes = settings.deadletter_raw_bytes
        # per worker: (the minute's start, reports kept in it)
        self._reports: dict[str, tuple[float, int]] = {}

    def _fields(self, source: str, error: DecodeError) -> dict[str, str | bytes]:
        return {
            "source": source,
            "reason": error.reason[:1000],
            "raw": error.raw[: self.raw_bytes],
            "raw_len": str(len(error.raw)),
            "at": utcnow().isoformat(),
        }

    async def write(self, source: str, error: DecodeError) -> None:
        """Record one undecodable message from ``source`` (a channel or stream name).

        Never raises for a Redis failure: losing a dead letter must not kill the loop
        that found it; it is logged instead.
        """
        log.warning("dead-lettered a message from %s: %s", source, error.reason)
        await self._add(self.keys.deadletter, self._fields(source, error), source)

    async def report(self, worker_id: str, source: str, error: DecodeError) -> None:
        """Record what worker ``worker_id`` reports it could not decode on ``source``
        (worker-supplied: shown, never a count's name), counted under the worker's
        control channel. Past ``REPORTS_PER_MINUTE`` in a minute only counted. Never
        raises for a Redis failure."""
        counted = self.keys.control(worker_id)  # what a worker reports on: its channel
        now = anyio.current_time()
        start, kept = self._reports.get(worker_id, (now, 0))
        if now - start >= 60:
            start, kept = now, 0
        if kept >= REPORTS_PER_MINUTE:
            await self._add(None, None, counted)
            return
        if len(self._reports) >= 10_000:
            self._reports.clear()
        self._reports[worker_id] = (start, kept + 1)
        shown = counted if source == counted else f"worker {worker_id}: {clip(source, 500)}"
        log.warning(
            "worker %s reported a dead letter from %s: %s",
            worker_id,
            shown,
            clip(error.reason, 300),
        )
        if kept + 1 == REPORTS_PER_MINUTE:
            log.warning(
                "worker %s: %d dead-letter reports this minute; the rest of the minute's "
                "are counted, not kept",
                worker_id,
                REPORTS_PER_MINUTE,
            )
        await self._add(self.keys.deadletter_reported, self._fields(shown, error), counted)

    async def _add(
        self, stream: str | None, fields: dict[str, str | bytes] | None, counted: str
    ) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if stream is not None and fields is not None:
                    pipe.xadd(stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.hincrby(self.keys.deadletter_counts, counted, 1)
                await call(pipe.execute())
        except Exception:
            log.exception("could not write the dead letter from %s", counted)

    async def counts(self) -> dict[str, int]:
        raw = await call(self.redis.hgetall(self.keys.deadletter_counts))
        return {text(k): int(v) for k, v in raw.items()}
