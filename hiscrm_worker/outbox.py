"""What a worker sends the Master: in order, task states coalesced, never dropped.

Everything goes to the worker's own streams (only its Redis user may append to them,
so the stream names the sender). Login events, crawl batches, recovery reports and
queued ACKs keep their order; a task's state is kept only in its newest form (10,000
tasks starting at once cost one event each at most). What cannot be written waits for
Redis to come back: one log line per outage, not one per retry.

A message Redis refuses on its own (its stream's key holds another type, or the
worker's user lost the right to write it) is sent again alone: what was written is
never sent twice. A stream refused ``PARK_AFTER`` times in a row is *parked*: its
messages wait aside (at most ``PARKED_MAX``; beyond, the oldest are dropped, counted in
one log line), the other streams flow, and the oldest parked message is tried again
every ``backoff_max_s``; once it is written, the rest follows in order.
"""

from __future__ import annotations

import logging
from collections import deque

import anyio
from redis.asyncio import Redis

from hiscrm_bus.keys import STREAM_KINDS, StreamKind
from hiscrm_bus.limits import clip
from hiscrm_bus.messages import DeadLetterReport, DecodeError, Message
from hiscrm_bus.messages import TaskStatus as TaskStatusEvent
from hiscrm_bus.resilience import Episode
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import append_each

log = logging.getLogger(__name__)


PARK_AFTER = 3  # refusals in a row that park a stream
PARKED_MAX = 10_000  # messages a parked stream keeps


class Outbox:
    def __init__(self, redis: Redis, settings: BusSettings, worker_id: str) -> None:
        self.redis = redis
        self.settings = settings
        self.worker_id = worker_id
        self.streams = {k: settings.keys.worker_stream(worker_id, k) for k in STREAM_KINDS}
        self._queue: deque[tuple[StreamKind, Message]] = deque()
        self._states: dict[str, TaskStatusEvent] = {}
        self._ready = anyio.Event()
        self._refusals = {
            k: Episode(log, f"worker {worker_id}: sending to {s}", settings)
            for k, s in self.streams.items()
        }
        self._parked: dict[StreamKind, deque[Message]] = {}
        self._dropped: dict[StreamKind, int] = {}
        self._probe_at = 0.0
        self._settled = anyio.Event()

    def send(self, kind: StreamKind, message: Message) -> None:
        """Queue a message for one of our streams without waiting."""
        if kind in self._parked:
            self._park(kind, [message])
            return
        self._queue.append((kind, message))
        self._wake()

    def state(self, event: TaskStatusEvent) -> None:
        """Queue a task's state; a newer one for the same account replaces it."""
        self._states[event.account_id] = event
        self._wake()

    def _wake(self) -> None:
        self._ready.set()
        if self._settled.is_set():
            self._settled = anyio.Event()

    async def settled(self) -> None:
        """Return once nothing is left to send now: all written, or waiting aside for a
        stream that refuses writes (a test hook, as arq's burst mode)."""
        await self._settled.wait()

    def __len__(self) -> int:
        return len(self._queue) + len(self._states) + self.parked

    def holds(self, kind: StreamKind) -> bool:
        """Whether messages for ``kind`` wait here (queued, or parked aside): what is
        sent to that stream now goes after them, through here, to keep the order."""
        return kind in self._parked or any(k == kind for k, _m in self._queue)

    @property
    def parked(self) -> int:
        """Messages waiting aside for a stream Redis keeps refusing."""
        return sum(len(q) for q in self._parked.values())

    async def run(self, batch: int = 500) -> None:
        """Write what is queued in pipelined batches; on an outage keep it all and retry,
        on one message's refusal retry that message alone (see the module docstring)."""
        episode = Episode(log, f"worker {self.worker_id}: sending", self.settings)
        while True:
            wait = self._probe_at - anyio.current_time() if self._parked else float("inf")
            with anyio.move_on_after(max(wait, 0)):
                await self._ready.wait()
            self._ready = anyio.Event()
            if self._parked and anyio.current_time() >= self._probe_at:
                await self._probe()
            while self._queue or (self._states and "events" not in self._parked):
                delay = await self._send_some(batch, episode)
                if delay:
                    await anyio.sleep(max(delay, self.settings.backoff_min_s))
            self._settled.set()

    async def _send_some(self, batch: int, episode: Episode) -> float:
        """Write one batch; returns how long to wait before the next (0: go on)."""
        states: dict[str, TaskStatusEvent] = {}
        if "events" not in self._parked:
            states, self._states = self._states, {}
        taken = [self._queue.popleft() for _ in range(min(batch, len(self._queue)))]
        sends: list[tuple[StreamKind, Message]] = [("events", e) for e in states.values()]
        sends += taken
        try:
            errors = await append_each(
                self.redis, [(self.streams[k], m) for k, m in sends], self.settings.stream_maxlen
            )
        except Exception as exc:  # an outage: nothing of it is known written
            self._queue.extendleft(reversed(taken))
            self._states = {**states, **self._states}
            return episode.failed(exc)
        episode.ok()
        refused: dict[StreamKind, list[Message]] = {}
        for (kind, message), error in zip(sends, errors, strict=True):
            if error is not None:
                refused.setdefault(kind, []).append(message)
        for kind in {k for k, _m in sends} - refused.keys():
            self._refusals[kind].ok()
        delay = 0.0
        again: list[tuple[StreamKind, Message]] = []
        for kind, messages in refused.items():
            error = next(e for (k, _m), e in zip(sends, errors, strict=True) if k == kind and e)
            delay = max(delay, self._refusals[kind].failed(error))
            if self._refusals[kind].failures >= PARK_AFTER:
                log.warning(
                    "worker %s: stream %s keeps refusing writes (%s); its messages wait "
                    "aside (at most %d), tried again every %.1f s",
                    self.worker_id,
                    self.streams[kind],
                    error,
                    PARKED_MAX,
                    self.settings.backoff_max_s,
                )
                # what is queued for it waits aside too, in order
                queued = [m for k, m in self._queue if k == kind]
                self._queue = deque((k, m) for k, m in self._queue if k != kind)
                self._parked[kind] = deque()
                self._park(kind, [*messages, *queued])
                self._probe_at = anyio.current_time() + self.settings.backoff_max_s
            else:
                again += [(kind, m) for m in messages]
        # a refused task state goes back among the states, unless a newer one for its
        # account came meanwhile: that one is sent, never the older after it
        for _kind, message in again:
            if isinstance(message, TaskStatusEvent):
                self._states.setdefault(message.account_id, message)
        again = [(k, m) for k, m in again if not isinstance(m, TaskStatusEvent)]
        self._queue.extendleft(reversed(again))
        return 0.0 if not again else delay

    def _park(self, kind: StreamKind, messages: list[Message]) -> None:
        parked = self._parked[kind]
        parked.extend(messages)
        over = len(parked) - PARKED_MAX
        if over > 0:
            for _ in range(over):
                parked.popleft()
            if not self._dropped.get(kind):
                log.error(
                    "worker %s: stream %s still refuses writes: its oldest waiting messages "
                    "are dropped beyond %d",
                    self.worker_id,
                    self.streams[kind],
                    PARKED_MAX,
                )
            self._dropped[kind] = self._dropped.get(kind, 0) + over

    async def _probe(self) -> None:
        """Try each parked stream's oldest message; a stream that takes it flows again."""
        self._probe_at = anyio.current_time() + self.settings.backoff_max_s
        for kind, parked in list(self._parked.items()):
            try:
                (error,) = await append_each(
                    self.redis, [(self.streams[kind], parked[0])], self.settings.stream_maxlen
                )
            except Exception:
                return  # an outage: the next probe, or the main loop, finds out
            if error is not None:
                continue
            parked.popleft()
            del self._parked[kind]
            dropped = self._dropped.pop(kind, 0)
            self._refusals[kind].failures = 0  # the episode's end is the line below
            log.warning(
                "worker %s: stream %s takes writes again; %d waiting message(s) follow%s",
                self.worker_id,
                self.streams[kind],
                len(parked),
                f" ({dropped} dropped)" if dropped else "",
            )
            self._queue.extendleft((kind, m) for m in reversed(parked))
            self._wake()


class DeadLettersToMaster:
    """Dead letters of the control channel, sent to the Master as events: a worker
    cannot write the shared dead-letter stream (so it cannot wipe it either)."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def write(self, source: str, error: DecodeError) -> None:
        worker_id = self.outbox.worker_id
        log.warning(
            "worker %s: dead-lettered a message from %s: %s", worker_id, source, error.reason
        )
        report = DeadLetterReport(
            sender=worker_id,
            worker_id=worker_id,
            source=clip(source, 500),
            reason=clip(error.reason),
            raw=error.raw[:4096].decode("utf-8", "replace"),
            raw_len=len(error.raw),
        )
        self.outbox.send("events", report)
