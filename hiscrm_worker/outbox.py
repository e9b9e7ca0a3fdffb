"""What a worker sends the Master: in order, task states coalesced, never dropped.

Everything goes to the worker's own streams (only its Redis user may append to them,
so the stream names the sender). Login events, crawl batches, recovery reports and
queued ACKs keep their order; a task's state is kept only in its newest form (10,000
tasks starting at once cost one event each at most). What cannot be written waits for
Redis to come back: one log line per outage, not one per retry.
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
from hiscrm_bus.streams import append_many_to

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, redis: Redis, settings: BusSettings, worker_id: str) -> None:
        self.redis = redis
        self.settings = settings
        self.worker_id = worker_id
        self.streams = {k: settings.keys.worker_stream(worker_id, k) for k in STREAM_KINDS}
        self._queue: deque[tuple[StreamKind, Message]] = deque()
        self._states: dict[str, TaskStatusEvent] = {}
        self._ready = anyio.Event()

    def send(self, kind: StreamKind, message: Message) -> None:
        """Queue a message for one of our streams without waiting."""
        self._queue.append((kind, message))
        self._ready.set()

    def state(self, event: TaskStatusEvent) -> None:
        """Queue a task's state; a newer one for the same account replaces it."""
        self._states[event.account_id] = event
        self._ready.set()

    def __len__(self) -> int:
        return len(self._queue) + len(self._states)

    async def run(self, batch: int = 500) -> None:
        """Write what is queued in pipelined batches; on any failure keep it and retry."""
        episode = Episode(log, f"worker {self.worker_id}: sending", self.settings)
        while True:
            await self._ready.wait()
            self._ready = anyio.Event()
            while self._queue or self._states:
                states, self._states = self._states, {}
                taken = [self._queue.popleft() for _ in range(min(batch, len(self._queue)))]
                sends: list[tuple[str, Message]] = [
                    (self.streams["events"], e) for e in states.values()
                ]
                sends += [(self.streams[kind], m) for kind, m in taken]
                try:
                    await append_many_to(self.redis, sends, self.settings.stream_maxlen)
                except Exception as exc:
                    self._queue.extendleft(reversed(taken))
                    self._states = {**states, **self._states}
                    await anyio.sleep(max(episode.failed(exc), self.settings.backoff_min_s))
                else:
                    episode.ok()


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
