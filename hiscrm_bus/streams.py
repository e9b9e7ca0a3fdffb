"""Redis streams carrying messages: append with trimming, read through a consumer group.

The reader re-reads its own pending entries at start and after every reconnect, claims
entries a dead consumer left idle (XAUTOCLAIM), and dead-letters what does not decode.
A handler that fails on Redis leaves its entry pending for the next pass; any other
handler failure is logged and the entry acknowledged, so one bad entry cannot wedge
the group.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff

from .connection import RECOVERABLE, call
from .deadletter import DeadLetters
from .messages import DecodeError, Message, decode, encode
from .settings import BusSettings

log = logging.getLogger(__name__)
FIELD = "msg"
Handler = Callable[[Message], Awaitable[None]]
BatchHandler = Callable[[list[Message]], Awaitable[None]]


async def append(redis: Redis, stream: str, message: Message, maxlen: int) -> str:
    """XADD one message with approximate MAXLEN trimming; returns the entry id."""
    entry_id = await call(
        redis.xadd(stream, {FIELD: encode(message)}, maxlen=maxlen, approximate=True)
    )
    return _s(entry_id)


async def append_many(redis: Redis, stream: str, messages: Sequence[Message], maxlen: int) -> None:
    """XADD many messages to one stream in one round trip."""
    await append_many_to(redis, [(stream, m) for m in messages], maxlen)


async def append_many_to(
    redis: Redis, messages: Sequence[tuple[str, Message]], maxlen: int
) -> None:
    """XADD many (stream, message) pairs in one round trip, in order."""
    if not messages:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for stream, message in messages:
            pipe.xadd(stream, {FIELD: encode(message)}, maxlen=maxlen, approximate=True)
        await call(pipe.execute())


async def last_entry_id(redis: Redis, stream: str) -> str:
    """The newest entry's id ("0-0" for an empty stream): read what comes after it."""
    last: Any = await call(redis.xrevrange(stream, count=1))
    return _s(last[0][0]) if last else "0-0"


class StreamReader:
    """One consumer of a consumer group on one stream."""

    def __init__(
        self,
        redis: Redis,
        settings: BusSettings,
        stream: str,
        group: str,
        consumer: str,
        *,
        block_ms: int = 1000,
        count: int = 100,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.block_ms = block_ms
        self.count = count
        self.deadletters = DeadLetters(redis, settings)
        self._backoff = ExponentialWithJitterBackoff(
            cap=settings.backoff_max_s, base=settings.backoff_min_s
        )
        self.processed = 0
        # the last read filled a whole batch: more is waiting behind it
        self.backlogged = False

    async def ensure_group(self) -> None:
        try:
            await call(self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True))
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(
        self, handler: Handler, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Consume forever, one message at a time. Signals readiness once the group exists."""

        async def each(messages: list[Message]) -> None:
            for message in messages:
                try:
                    await handler(message)
                except RECOVERABLE:
                    raise  # the batch stays pending; re-read after reconnect
                except Exception:
                    log.exception("stream %s: handler failed on %s", self.stream, message.type)

        await self.run_batches(each, task_status=task_status)

    async def run_batches(
        self,
        handler: BatchHandler,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume forever, a read's worth of messages per call (one XACK per batch)."""
        failures = 0
        started = False
        while True:
            try:
                await self.ensure_group()
                if not started:
                    task_status.started()
                    started = True
                await self._drain_own_pending(handler)
                failures = 0
                await self._consume(handler)
            except RECOVERABLE as exc:
                failures += 1
                log.warning("stream %s: Redis unavailable (%s); retrying", self.stream, exc)
            except rexc.ResponseError as exc:
                # a reader blocked in XREADGROUP gets UNBLOCKED when the stream key is
                # deleted, and NOGROUP when the group is destroyed: recreate both
                if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                    raise
                log.warning("stream %s: consumer group vanished; recreating it", self.stream)
            await anyio.sleep(self._backoff.compute(failures) if failures else 0)

    async def _drain_own_pending(self, handler: BatchHandler) -> None:
        while True:
            reply = await call(
                self.redis.xreadgroup(
                    self.group, self.consumer, {self.stream: "0"}, count=self.count
                )
            )
            entries = _entries(reply)
            if not entries:
                return
            await self._process(entries, handler)

    async def _consume(self, handler: BatchHandler) -> None:
        claim_every = max(self.settings.claim_idle_s / 2, 0.05)
        next_claim = 0.0
        while True:
            if anyio.current_time() >= next_claim:
                await self._claim_idle(handler)
                next_claim = anyio.current_time() + claim_every
            reply = await call(
                self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.stream: ">"},
                    count=self.count,
                    block=self.block_ms,
                )
            )
            await self._process(_entries(reply), handler)

    async def _claim_idle(self, handler: BatchHandler) -> None:
        cursor = "0-0"
        min_idle = int(self.settings.claim_idle_s * 1000)
        while True:
            reply = await call(
                self.redis.xautoclaim(
                    self.stream, self.group, self.consumer, min_idle, cursor, count=self.count
                )
            )
            cursor, claimed = _s(reply[0]), reply[1]
            entries = [(e[0], e[1]) for e in claimed if e and e[1] is not None]
            if entries:
                log.info("stream %s: claimed %d idle entries", self.stream, len(entries))
                await self._process(entries, handler)
            if cursor == "0-0":
                return

    async def _process(self, entries: list[tuple[Any, Any]], handler: BatchHandler) -> None:
        if not entries:
            self.backlogged = False
            return
        self.backlogged = len(entries) >= self.count
        messages: list[Message] = []
        for _entry_id, fields in entries:
            raw = fields.get(FIELD.encode(), fields.get(FIELD, b"")) if fields else b""
            message = decode(raw) if raw else DecodeError(f"entry has no {FIELD!r} field", b"")
            if isinstance(message, DecodeError):
                if not raw:
                    message = DecodeError(message.reason, repr(fields).encode())
                await self.deadletters.write(self.stream, message)
            else:
                messages.append(message)
        if messages:
            try:
                await handler(messages)
            except RECOVERABLE:
                raise  # entries stay pending; re-read after reconnect
            except Exception:
                log.exception("stream %s: batch handler failed", self.stream)
        await call(self.redis.xack(self.stream, self.group, *[e[0] for e in entries]))
        self.processed += len(entries)


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    if not reply:
        return []
    # RESP2: [[stream, [(id, fields), ...]]]; RESP3: {stream: [[(id, fields), ...]]}
    if isinstance(reply, dict):
        out: list[tuple[Any, Any]] = []
        for value in reply.values():
            for batch in value:
                out.extend(batch)
        return out
    return [entry for _stream, batch in reply for entry in batch]


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
