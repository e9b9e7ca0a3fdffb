"""The dead-letter stream: every message that failed to decode, with why, and a count."""

from __future__ import annotations

import logging
from typing import Protocol

from redis.asyncio import Redis

from .connection import call, text
from .keys import Keys
from .limits import utcnow
from .messages import DecodeError
from .settings import BusSettings

log = logging.getLogger(__name__)


class DeadLetterWriter(Protocol):
    """Where a loop puts what it could not decode."""

    async def write(self, source: str, error: DecodeError) -> None: ...


class DeadLetters:
    def __init__(self, redis: Redis, settings: BusSettings) -> None:
        self.redis = redis
        self.keys: Keys = settings.keys
        self.maxlen = settings.deadletter_maxlen
        self.raw_bytes = settings.deadletter_raw_bytes

    async def write(self, source: str, error: DecodeError) -> None:
        """Record one undecodable message from ``source`` (a channel or stream name).

        Never raises for a Redis failure: losing a dead letter must not kill the loop
        that found it; it is logged instead.
        """
        raw = error.raw[: self.raw_bytes]
        fields: dict[str, str | bytes] = {
            "source": source,
            "reason": error.reason[:1000],
            "raw": raw,
            "raw_len": str(len(error.raw)),
            "at": utcnow().isoformat(),
        }
        log.warning("dead-lettered a message from %s: %s", source, error.reason)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.keys.deadletter, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.hincrby(self.keys.deadletter_counts, source, 1)
                await call(pipe.execute())
        except Exception:
            log.exception("could not write the dead letter from %s", source)

    async def counts(self) -> dict[str, int]:
        raw = await call(self.redis.hgetall(self.keys.deadletter_counts))
        return {text(k): int(v) for k, v in raw.items()}
