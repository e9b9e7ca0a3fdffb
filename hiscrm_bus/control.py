"""Per-worker control channels: publish, and a subscription that survives anything.

Pub/sub is at-most-once, so the subscription calls a reconcile hook after every
(re)subscribe: whatever was published while it was away is found by comparing versions.
redis-py's own reconnect would resubscribe silently and skip that hook, so this client
runs without retries and the loop here reconnects, with backoff, itself. A connection
that dies silently (no RST) is caught by our own PING with a deadline.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskStatus
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import ExponentialWithJitterBackoff

from .connection import RECOVERABLE, call, make_client
from .deadletter import DeadLetterWriter
from .messages import DecodeError, Message, decode, encode
from .settings import BusSettings

log = logging.getLogger(__name__)
Handler = Callable[[Message], Awaitable[None]]
BurstHandler = Callable[[list[Message]], Awaitable[None]]
# messages taken off the connection's buffer at once when they arrive faster than
# they are handled (a fleet-wide change sends a worker hundreds together)
MAX_BURST = 500
Hook = Callable[[], Awaitable[None]]


async def publish(redis: Redis, settings: BusSettings, worker_id: str, message: Message) -> int:
    """Publish to one worker's control channel; returns how many subscribers got it."""
    return int(await call(redis.publish(settings.keys.control(worker_id), encode(message))))


class SilentlyDead(Exception):
    """Our PING got no PONG in time: the connection is gone without telling us."""


_LOST: tuple[type[BaseException], ...] = (*RECOVERABLE, SilentlyDead)


class ControlSubscription:
    def __init__(
        self,
        settings: BusSettings,
        worker_id: str,
        handler: Handler,
        on_subscribed: Hook,
        deadletters: DeadLetterWriter,
        *,
        burst: BurstHandler | None = None,
    ) -> None:
        """``handler`` gets each message; with ``burst``, every message goes to
        ``burst`` instead: one that arrives alone at once, and those that arrived while
        it was being handled (waiting in the connection's buffer, up to MAX_BURST) in
        one call, in order, so it can answer them in bulk."""
        self.settings = settings
        self.channel = settings.keys.control(worker_id)
        self.handler = handler
        self.burst = burst
        self.on_subscribed = on_subscribed
        self.deadletters = deadletters
        self.subscriptions = 0  # how many times we (re)subscribed; for status and tests
        self._token = f"hiscrm-ping-{uuid.uuid4().hex[:8]}"
        self._backoff = ExponentialWithJitterBackoff(
            cap=settings.backoff_max_s, base=settings.backoff_min_s
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, reconcile, listen; on any connection loss, back off and start over.
        Signals readiness after the first subscribe and reconcile."""
        failures = 0
        started = False
        while True:
            client = make_client(self.settings, retries=False)
            pubsub = client.pubsub()
            try:
                await self._subscribe(pubsub)
                failures = 0
                self.subscriptions += 1
                log.info("subscribed to %s (%d)", self.channel, self.subscriptions)
                await self._reconcile()
                if not started:
                    task_status.started()
                    started = True
                await self._listen(pubsub)
            except _LOST as exc:
                failures += 1
                log.warning("control subscription %s lost (%s); resubscribing", self.channel, exc)
            except Exception as exc:
                # an error reply (e.g. NOPERM while an operator fixes the user's rules)
                # or a bug: never the end of the worker's subscription
                failures += 1
                if failures == 1:
                    log.exception("control subscription %s failed; resubscribing", self.channel)
                else:
                    log.debug("control subscription %s failed again: %s", self.channel, exc)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await _close(pubsub, client)
            await anyio.sleep(self._backoff.compute(failures))

    async def _subscribe(self, pubsub: PubSub) -> None:
        # the connect itself is under the deadline too: redis-py's handshake waits for
        # replies without a socket timeout, so a path that accepts TCP but is dead
        # would otherwise hang here forever
        with anyio.fail_after(self.settings.ping_timeout_s + self.settings.redis_timeout_s):
            await call(pubsub.subscribe(self.channel))
            while True:
                reply = await call(pubsub.get_message(timeout=self.settings.ping_timeout_s))
                if reply is not None and reply["type"] == "subscribe":
                    return

    async def _reconcile(self) -> None:
        try:
            await self.on_subscribed()
        except RECOVERABLE:
            raise
        except Exception:
            # a reconcile bug must not stop updates from arriving; the periodic
            # anti-entropy pass will try again
            log.exception("reconcile after subscribing to %s failed", self.channel)

    async def _listen(self, pubsub: PubSub) -> None:
        interval = self.settings.ping_interval_s
        ping_sent: float | None = None
        last_heard = anyio.current_time()
        while True:
            now = anyio.current_time()
            if ping_sent is not None:
                timeout = ping_sent + self.settings.ping_timeout_s - now
                if timeout <= 0:
                    raise SilentlyDead(f"no PONG within {self.settings.ping_timeout_s}s")
            else:
                timeout = last_heard + interval - now
                if timeout <= 0:
                    await call(pubsub.ping(self._token))
                    ping_sent = now
                    continue
            reply = await call(pubsub.get_message(timeout=timeout))
            if reply is None:
                continue
            last_heard = anyio.current_time()
            if reply["type"] == "pong":
                ping_sent = None
            elif reply["type"] == "message":
                # a lone message is handled at once (no look for more first: that look
                # would sit on every update's path); what arrived meanwhile, in bursts
                await self._dispatch([reply["data"]])
                while self.burst is not None:
                    burst, ponged = await self._waiting(pubsub)
                    if ponged:
                        ping_sent = None
                    if not burst:
                        break
                    await self._dispatch(burst)

    async def _waiting(self, pubsub: PubSub) -> tuple[list[bytes], bool]:
        """The messages already in the connection's buffer (up to MAX_BURST), without
        waiting; and whether a PONG was among the replies."""
        burst: list[bytes] = []
        ponged = False
        while len(burst) < MAX_BURST:
            more = await call(pubsub.get_message(timeout=0))  # never waits
            if more is None:
                break
            if more["type"] == "pong":
                ponged = True
            elif more["type"] == "message":
                burst.append(more["data"])
        return burst, ponged

    async def _dispatch(self, burst: list[bytes]) -> None:
        messages: list[Message] = []
        for data in burst:
            message = decode(data)
            if isinstance(message, DecodeError):
                await self.deadletters.write(self.channel, message)
            else:
                messages.append(message)
        if self.burst is None:
            for message in messages:
                await self._handle(self.handler(message), [message])
        elif messages:
            await self._handle(self.burst(messages), messages)

    async def _handle(self, handling: Awaitable[None], messages: list[Message]) -> None:
        try:
            await handling
        except Exception:
            # never let a message end the subscription; the sender retries
            kinds = ", ".join(sorted({m.type for m in messages}))
            log.exception(
                "handling %d message(s) (%s) on %s failed", len(messages), kinds, self.channel
            )


async def _close(pubsub: PubSub, client: Redis) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()
