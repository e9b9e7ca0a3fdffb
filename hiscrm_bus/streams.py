"""Redis streams carrying messages: append with trimming, read through a consumer group.

The reader re-reads its own pending entries at start and after every reconnect, claims
entries a dead consumer left idle (XAUTOCLAIM), and dead-letters what does not decode.
A handler that fails on Redis leaves its entry pending for the next pass; any other
handler failure is logged and the entry acknowledged, so one bad entry cannot wedge
the group. One reader can follow many streams (one per worker) in one XREADGROUP.

On a Redis Cluster one command may only name keys of one slot (CROSSSLOT otherwise),
so the streams are read in *lanes*, one per slot: a task per lane blocks in its own
XREADGROUP, and the lanes take turns handling what they read, so the handler still
sees one batch at a time. The workers of one worker group share a slot (the hash tag
of ``keys.worker_stream``), so a Master blocks in at most ``WORKER_GROUPS`` reads per
kind of stream. On one Redis everything is one lane, read as before in one loop.
Pipelines spanning slots stay: redis-py's cluster pipeline splits them per node.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskStatus
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.crc import key_slot

from .connection import RECOVERABLE, call, call_each, is_cluster, text
from .deadletter import DeadLetters
from .messages import DecodeError, Message, decode, encode
from .resilience import Episode, side_by_side
from .settings import BusSettings

log = logging.getLogger(__name__)
FIELD = "msg"
# the "lanes" of ``StreamReader._backlogged`` that are no slot: the one read of one
# Redis, and a drain or claim pass (which goes on until nothing is left, so its flag
# is dropped when it ends: no later read would ever clear it on a cluster)
_ONE_REDIS = -1
_PASS = -2


@dataclass(frozen=True, slots=True)
class Received:
    """A message as read: who wrote its stream (``source``), which stream, what, and
    its entry id there (whose first part is Redis' clock, in ms, when it was added)."""

    source: str
    stream: str
    message: Message
    entry_id: str = ""

    @property
    def added_ms(self) -> int:
        """When Redis added the entry (epoch ms), 0 when unknown."""
        return entry_parts(self.entry_id)[0]


Entry = tuple[str, Any, Any]  # (stream, entry id, fields)
Handler = Callable[[Message], Awaitable[None]]
BatchHandler = Callable[[list[Message]], Awaitable[None]]
ReceivedHandler = Callable[[list[Received]], Awaitable[None]]
Discover = Callable[[], Awaitable[Mapping[str, str]]]
# of the given sources (e.g. worker ids), those alive now: only their streams are made
Live = Callable[[Sequence[str]], Awaitable[Collection[str]]]
# the stream a NOGROUP error reply names (XREADGROUP, XAUTOCLAIM, XACK)
_NOGROUP_KEY = re.compile(r"No such key '(.*?)' or consumer group '")


async def append(redis: Redis, stream: str, message: Message, maxlen: int) -> str:
    """XADD one message with approximate MAXLEN trimming; returns the entry id."""
    entry_id = await call(
        redis.xadd(stream, {FIELD: encode(message)}, maxlen=maxlen, approximate=True)
    )
    return text(entry_id)


async def append_many(redis: Redis, stream: str, messages: Sequence[Message], maxlen: int) -> None:
    """XADD many messages to one stream in one round trip."""
    await append_many_to(redis, [(stream, m) for m in messages], maxlen)


async def append_many_to(
    redis: Redis, messages: Sequence[tuple[str, Message]], maxlen: int
) -> None:
    """XADD many (stream, message) pairs in one round trip, in order. The first error
    reply is raised, though the other messages were written (see :func:`append_each`)."""
    for error in await append_each(redis, messages, maxlen):
        if error is not None:
            raise error


async def append_each(
    redis: Redis, messages: Sequence[tuple[str, Message]], maxlen: int
) -> list[Exception | None]:
    """XADD many (stream, message) pairs in one round trip, in order; per message None
    when it was written, or the error reply Redis gave it (WRONGTYPE: its key holds
    another type; NOPERM): the others are written all the same (no transaction). An
    outage is everyone's: BusUnavailable."""
    if len(messages) == 1:  # a pipeline costs redis-py a fifth more than a call
        ((stream, message),) = messages
        try:
            await append(redis, stream, message, maxlen)
        except rexc.ResponseError as exc:  # call() raised the transient ones as outages
            return [exc]
        return [None]
    if not messages:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for stream, message in messages:
            pipe.xadd(stream, {FIELD: encode(message)}, maxlen=maxlen, approximate=True)
        replies = await call_each(pipe.execute(raise_on_error=False))
    return [r if isinstance(r, Exception) else None for r in replies]


async def last_entry_id(redis: Redis, stream: str) -> str:
    """The newest entry's id ("0-0" for an empty stream): read what comes after it."""
    last: Any = await call(redis.xrevrange(stream, count=1))
    return text(last[0][0]) if last else "0-0"


async def trim_consumed(redis: Redis, streams: Sequence[str], group: str) -> None:
    """Delete what ``group`` has read and acknowledged from ``streams`` (one round trip
    to look, one to trim): everything before its oldest pending entry, or before the
    first entry it has not read yet. What is unread or unacknowledged stays, so no
    consumer loses anything; a stream ``group`` does not read is left alone."""
    if not streams:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, group)
        replies = await call_each(pipe.execute(raise_on_error=False))
    cuts: dict[str, str] = {}
    for n, stream in enumerate(streams):
        info, pending = replies[2 * n], replies[2 * n + 1]
        if isinstance(info, Exception) or isinstance(pending, Exception):
            continue  # no stream, or no group yet
        groups = [g for g in info if text(g.get("name") or "") == group]
        if len(info) != 1 or not groups:
            continue  # another group reads it too: not ours to trim
        last = text(groups[0].get("last-delivered-id") or "0-0")
        cut = _next_id(last)
        oldest = pending.get("min") if pending.get("pending") else None
        if oldest:
            cut = min(cut, text(oldest), key=entry_parts)
        if cut != "0-1":
            cuts[stream] = cut
    if cuts:
        async with redis.pipeline(transaction=False) as pipe:
            for stream, cut in cuts.items():
                pipe.xtrim(stream, minid=cut, approximate=False)
            await call_each(pipe.execute(raise_on_error=False))


def entry_parts(entry_id: str) -> tuple[int, int]:
    """(ms, sequence) of a stream entry id: its order, and Redis' clock when it was
    added; (0, 0) for a string that is no entry id."""
    ms, _, seq = entry_id.partition("-")
    return (int(ms), int(seq or 0)) if ms.isdigit() and (not seq or seq.isdigit()) else (0, 0)


def _next_id(entry_id: str) -> str:
    ms, seq = entry_parts(entry_id)
    return f"{ms}-{seq + 1}"


def by_slot(streams: Iterable[str]) -> dict[int, list[str]]:
    """``streams`` grouped by their cluster slot (what one multi-key read may name)."""
    lanes: dict[int, list[str]] = {}
    for stream in streams:
        lanes.setdefault(key_slot(stream.encode("utf-8", "surrogatepass")), []).append(stream)
    return lanes


class StreamFollower:
    """Follows streams from a point on without a consumer group (XREAD), as an operator
    command watches a worker's events: every entry after the cursor, in order."""

    def __init__(self, redis: Redis, *, block_ms: int = 1000, count: int = 100) -> None:
        self.redis = redis
        self.block_ms = block_ms
        self.count = count
        self.cursors: dict[str, str] = {}

    def follow(self, stream: str, after: str = "$") -> None:
        """Read ``stream`` from after entry ``after`` on (kept if already followed)."""
        self.cursors.setdefault(stream, after)

    async def start_at_end(self, stream: str) -> None:
        """Follow ``stream`` from what is appended after now."""
        self.follow(stream, await last_entry_id(self.redis, stream))

    async def read(self) -> list[tuple[str, Message | DecodeError]]:
        """What came since the last read, waiting up to ``block_ms`` for something
        ([] when nothing came). Entries that do not decode come as DecodeError."""
        if not self.cursors:
            await anyio.sleep(self.block_ms / 1000)
            return []
        if is_cluster(self.redis) and len(lanes := by_slot(self.cursors)) > 1:
            entries = await self._read_lanes(list(lanes.values()))
        else:
            entries = await self._read(dict(self.cursors))
        out: list[tuple[str, Message | DecodeError]] = []
        for stream, entry_id, fields in entries:
            self.cursors[stream] = text(entry_id)
            raw = fields.get(FIELD.encode(), b"") if fields else b""
            out.append((stream, decode(raw) if raw else DecodeError("no message", b"")))
        return out

    async def _read(self, cursors: dict[str, str]) -> list[Entry]:
        reply: Any = await call(
            self.redis.xread(cursors, count=self.count, block=self.block_ms)  # type: ignore[arg-type]
        )
        return _entries(reply)  # XREAD's reply has XREADGROUP's shape

    async def _read_lanes(self, lanes: list[list[str]]) -> list[Entry]:
        """One blocking XREAD per slot, side by side; returns when all have answered
        (an operator's view: a lane that has nothing holds the others up to
        ``block_ms``)."""
        entries: list[Entry] = []

        async def one(streams: list[str]) -> None:
            entries.extend(await self._read({s: self.cursors[s] for s in streams}))

        async with side_by_side() as tg:
            for streams in lanes:
                tg.start_soon(one, streams)
        return entries


class StreamReader:
    """One consumer of a consumer group over a set of streams.

    With ``discover`` the set follows a changing fleet: it returns ``{stream: source}``
    (e.g. each worker's outgoing stream and the worker's id) and is asked again every
    ``refresh_s``. Handlers receive each message with the source of the stream it was
    read from: the stream's writer is who sent it, whatever the message claims.

    With ``live`` too, a discovered stream that does not exist is made (with the
    group) only when ``live`` says its source is alive: a name that is only listed
    (a dead or made-up worker) costs no key; it is looked at again every
    ``absent_retry_s``.

    A stream that loses its key or group while read (its writer deleted it) is made
    again alone, after a back-off that grows while it keeps happening (one log line
    per episode); the other streams are read on meanwhile, and nothing is re-read.
    """

    def __init__(
        self,
        redis: Redis,
        settings: BusSettings,
        stream: str | None,
        group: str,
        consumer: str,
        *,
        block_ms: int = 1000,
        count: int = 100,
        discover: Discover | None = None,
        refresh_s: float = 0.25,
        live: Live | None = None,
        absent_retry_s: float = 2.0,
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.streams: dict[str, str] = {stream: ""} if stream else {}
        self.group = group
        self.consumer = consumer
        self.block_ms = block_ms
        self.count = count
        self.discover = discover
        self.refresh_s = refresh_s
        self.live = live
        self.absent_retry_s = absent_retry_s
        self.deadletters = DeadLetters(redis, settings)
        self.processed = 0
        # per lane (slot; one lane on one Redis): its last read filled a whole batch
        self._backlogged: dict[int, bool] = {}
        # on a cluster, lanes take turns in the handler
        self._turn = anyio.Lock()
        self._lanes: dict[int, list[str]] = {}  # on a cluster: the streams of each slot
        self._grouped: set[str] = set()
        self._broken: set[str] = set()
        # streams not to (re)create before a time: absent ones of sources not alive,
        # and ones whose group vanished, during their back-off
        self._held: dict[str, float] = {}
        self._next_refresh = 0.0
        label = ",".join(self.streams) or "discovered streams"
        self.episode = Episode(log, f"stream reader {group}/{consumer} on {label}", settings)
        self.regroups = Episode(log, f"{self.episode.what}: a stream lost its group", settings)
        self._regrouped_at = 0.0

    @property
    def stream(self) -> str:
        """The stream of a single-stream reader."""
        return next(iter(self.streams))

    @property
    def backlogged(self) -> bool:
        """A last read filled a whole batch: more is waiting behind it."""
        return any(self._backlogged.values())

    async def ensure_group(self) -> None:
        await self._refresh(force=True)

    async def _refresh(self, *, force: bool = False) -> None:
        now = anyio.current_time()
        if self.discover is not None and (force or now >= self._next_refresh):
            self.streams = dict(await self.discover())
            self._next_refresh = now + self.refresh_s
            for stream in self._held.keys() - self.streams.keys():
                del self._held[stream]
        if force:
            self._grouped.clear()
        new = [s for s in self.streams if s not in self._grouped and self._held.get(s, 0.0) <= now]
        if not new:
            return
        replies = await self._create(new, mkstream=self.live is None)
        absent: list[str] = []
        for stream, reply in zip(new, replies, strict=True):
            if isinstance(reply, Exception) and "requires the key to exist" in str(reply):
                absent.append(stream)
            else:
                self._created(stream, reply)
        if not absent or self.live is None:
            return
        alive = set(await self.live(sorted({self.streams[s] for s in absent})))
        made = [s for s in absent if self.streams[s] in alive]
        for stream in absent:
            if stream not in alive:
                self._held[stream] = now + self.absent_retry_s
        if made:
            for stream, reply in zip(made, await self._create(made, mkstream=True), strict=True):
                self._created(stream, reply)

    async def _create(self, streams: Sequence[str], *, mkstream: bool) -> list[Any]:
        """XGROUP CREATE on each of ``streams`` in one round trip; each one's reply."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xgroup_create(stream, self.group, id="0", mkstream=mkstream)
            return list(await call_each(pipe.execute(raise_on_error=False)))

    def _created(self, stream: str, reply: Any) -> None:
        if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
            # e.g. the key holds another type: read the others, report this one once
            if stream not in self._broken:
                log.warning("stream %s: cannot create group %s: %s", stream, self.group, reply)
                self._broken.add(stream)
            return
        self._broken.discard(stream)
        self._held.pop(stream, None)
        self._grouped.add(stream)

    async def _regroup(self, exc: Exception) -> None:
        """A read found a stream without its key or group (NOGROUP names it; an
        UNBLOCKED read names none: then every stream is looked at, in one round trip).
        That stream alone is made again, after this episode's back-off."""
        names = set(_NOGROUP_KEY.findall(str(exc))) & self._grouped
        if not names:
            names = await self._ungrouped()
        delay = self.regroups.failed(exc)
        self._regrouped_at = anyio.current_time()
        for stream in names:
            self._grouped.discard(stream)
            self._held[stream] = self._regrouped_at + delay
        if not names:  # nothing to set apart: wait here instead
            await anyio.sleep(delay)

    async def _ungrouped(self) -> set[str]:
        """The streams read whose key or group is gone."""
        streams = list(self._grouped)
        async with self.redis.pipeline(transaction=False) as pipe:
            for stream in streams:
                pipe.xinfo_groups(stream)
            replies = await call_each(pipe.execute(raise_on_error=False))
        return {
            stream
            for stream, info in zip(streams, replies, strict=True)
            if isinstance(info, Exception)
            or not any(text(g.get("name") or "") == self.group for g in info)
        }

    def _read_ok(self) -> None:
        """A read succeeded: the loop's episode ends, and the regroup episode once no
        stream lost its group for a while (so a writer that keeps deleting its stream
        meets a growing back-off)."""
        self.episode.ok()
        if (
            self.regroups.failures
            and anyio.current_time() - self._regrouped_at > self.settings.backoff_max_s
        ):
            self.regroups.ok()

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

        async def plain(received: list[Received]) -> None:
            await handler([r.message for r in received])

        await self.run_received(plain, task_status=task_status)

    async def run_received(
        self,
        handler: ReceivedHandler,
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Consume forever, a read's worth of messages with their sources per call.
        No error ends the loop: Redis outages and error replies are waited out."""
        started = False
        fresh = True  # at start and after a failure: (re)make groups, re-read our pending
        while True:
            try:
                if fresh:
                    await self.ensure_group()
                    if not started:
                        task_status.started()
                        started = True
                    await self._drain_own_pending(handler)
                    self.episode.ok()
                    fresh = False
                await self._consume(handler)
            except rexc.ResponseError as exc:
                # a stream deleted (or its group destroyed) by its writer: NOGROUP, or
                # UNBLOCKED for a read blocked on it. That stream alone is made again
                if "NOGROUP" in str(exc) or "UNBLOCKED" in str(exc):
                    try:
                        await self._regroup(exc)
                    except Exception as again:
                        fresh = True
                        await anyio.sleep(self.episode.failed(again))
                    continue
                fresh = True
                await anyio.sleep(self.episode.failed(exc))
            except Exception as exc:
                fresh = True
                await anyio.sleep(self.episode.failed(exc))

    async def _drain_own_pending(self, handler: ReceivedHandler) -> None:
        # on a cluster a slot's streams at once: after a failover every reader drains
        # again, and a fleet of thousands of streams sits in a few dozen slots
        if is_cluster(self.redis):
            lanes = list(by_slot(self._grouped).values())
        else:
            lanes = [[stream] for stream in self._grouped]
        try:
            for streams in lanes:
                while True:
                    reply = await call(
                        self.redis.xreadgroup(
                            self.group, self.consumer, dict.fromkeys(streams, "0"), count=self.count
                        )
                    )
                    entries = _entries(reply)
                    if not entries:
                        break
                    await self._process(entries, handler, lane=_PASS)
        finally:
            self._backlogged.pop(_PASS, None)

    async def _consume(self, handler: ReceivedHandler) -> None:
        if is_cluster(self.redis):
            await self._consume_lanes(handler)
            return
        claim_every = max(self.settings.claim_idle_s / 2, 0.05)
        next_claim = 0.0
        while True:
            await self._refresh()
            if anyio.current_time() >= next_claim:
                await self._claim_idle(handler)
                next_claim = anyio.current_time() + claim_every
            if not self._grouped:
                await anyio.sleep(min(self.block_ms / 1000, self.refresh_s))
                continue
            reply = await call(
                self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    dict.fromkeys(self._grouped, ">"),
                    count=self.count,
                    block=self.block_ms,
                )
            )
            entries = _entries(reply)
            await self._process(entries, handler, lane=_ONE_REDIS)
            self._read_ok()

    async def _consume_lanes(self, handler: ReceivedHandler) -> None:
        """The cluster's loop: keep the fleet's streams and a reading task per slot
        (lane) up to date, and claim idle entries; a task whose slot has no stream
        left ends. The first failure of any lane ends them all (``run_received``
        backs off and starts over)."""
        claim_every = max(self.settings.claim_idle_s / 2, 0.05)
        next_claim = 0.0
        reading: set[int] = set()
        async with side_by_side() as tg:
            while True:
                await self._refresh()
                self._lanes = by_slot(self._grouped)
                for slot in self._lanes.keys() - reading:
                    reading.add(slot)
                    tg.start_soon(self._read_lane, slot, handler, reading)
                if anyio.current_time() >= next_claim:
                    async with self._turn:
                        await self._claim_idle(handler)
                    next_claim = anyio.current_time() + claim_every
                await anyio.sleep(self.refresh_s)

    async def _read_lane(self, slot: int, handler: ReceivedHandler, reading: set[int]) -> None:
        """Read one slot's streams (those it has now, each pass) until it has none."""
        try:
            while streams := self._lanes.get(slot):
                reply = await call(
                    self.redis.xreadgroup(
                        self.group,
                        self.consumer,
                        dict.fromkeys(streams, ">"),
                        count=self.count,
                        block=self.block_ms,
                    )
                )
                async with self._turn:
                    await self._process(_entries(reply), handler, lane=slot)
                self._read_ok()
        finally:
            reading.discard(slot)
            self._backlogged.pop(slot, None)

    async def _claim_idle(self, handler: ReceivedHandler) -> None:
        """Claim what dead consumers left idle, every stream's first page in one round
        trip (the check runs inside the read loop: it must not stall it)."""
        try:
            await self._claim_pages(handler)
        finally:
            self._backlogged.pop(_PASS, None)

    async def _claim_pages(self, handler: ReceivedHandler) -> None:
        min_idle = int(self.settings.claim_idle_s * 1000)
        cursors = dict.fromkeys(self._grouped, "0-0")
        while cursors:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, cursor in cursors.items():
                    pipe.xautoclaim(
                        stream, self.group, self.consumer, min_idle, cursor, count=self.count
                    )
                replies = await call(pipe.execute())
            following: dict[str, str] = {}
            for stream, reply in zip(list(cursors), replies, strict=True):
                cursor, claimed = text(reply[0]), reply[1]
                entries = [(stream, e[0], e[1]) for e in claimed if e and e[1] is not None]
                if entries:
                    log.info("stream %s: claimed %d idle entries", stream, len(entries))
                    await self._process(entries, handler, lane=_PASS)
                if cursor != "0-0":
                    following[stream] = cursor
            cursors = following

    async def _process(self, entries: list[Entry], handler: ReceivedHandler, *, lane: int) -> None:
        """Hand ``entries`` to the handler, dead-letter what does not decode, then
        acknowledge them all. ``lane``: the slot they were read from (``_ONE_REDIS``:
        one Redis; ``_PASS``: a drain or claim pass, whose flag lasts while it runs)."""
        if not entries:
            self._backlogged[lane] = False
            return
        per_stream: dict[str, int] = {}
        received: list[Received] = []
        for stream, entry_id, fields in entries:
            per_stream[stream] = per_stream.get(stream, 0) + 1
            raw = fields.get(FIELD.encode(), fields.get(FIELD, b"")) if fields else b""
            message = decode(raw) if raw else DecodeError(f"entry has no {FIELD!r} field", b"")
            if isinstance(message, DecodeError):
                if not raw:
                    message = DecodeError(message.reason, repr(fields).encode())
                await self.deadletters.write(stream, message)
            else:
                source = self.streams.get(stream, "")
                received.append(Received(source, stream, message, text(entry_id)))
        self._backlogged[lane] = any(n >= self.count for n in per_stream.values())
        if received:
            try:
                await handler(received)
            except RECOVERABLE:
                raise  # entries stay pending; re-read after reconnect
            except Exception:
                log.exception("%s: batch handler failed", self.episode.what)
        acks = [(s, [e[1] for e in entries if e[0] == s]) for s in per_stream]
        if len(acks) == 1:  # the usual case: no pipeline for one command
            await call(self.redis.xack(acks[0][0], self.group, *acks[0][1]))
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, ids in acks:
                    pipe.xack(stream, self.group, *ids)
                await call(pipe.execute())
        self.processed += len(entries)


def _entries(reply: Any) -> list[Entry]:
    """(stream, entry id, fields) of an XREAD or XREADGROUP reply."""
    if not reply:
        return []
    # RESP2: [[stream, [(id, fields), ...]]]; RESP3: {stream: [[(id, fields), ...]]}
    if isinstance(reply, dict):
        out: list[Entry] = []
        for stream, value in reply.items():
            for batch in value:
                out.extend((text(stream), e[0], e[1]) for e in batch)
        return out
    return [(text(stream), e[0], e[1]) for stream, batch in reply for e in batch]
