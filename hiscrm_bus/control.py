"""Per-worker control channels: publish, and a subscription that survives anything.

Pub/sub is at-most-once, so the subscription calls a reconcile hook after every
(re)subscribe: whatever was published while it was away is found by comparing versions.
redis-py's own reconnect would resubscribe silently and skip that hook, so this client
runs without retries and the loop here reconnects, with backoff, itself. A connection
that dies silently (no RST) is caught by our own PING with a deadline.

On a Redis Cluster the channel is a shard channel (SPUBLISH / SSUBSCRIBE): a message
goes to the one shard that owns the channel's slot. The subscription is a plain
connection to that slot's primary, found afresh before every (re)subscribe: redis-py's
ClusterPubSub loses messages once the slot moves. When the slot moves away, or the node
becomes a replica, Redis sends a ``sunsubscribe`` of its own; that, like a lost
connection, means: back off, find the owner again, resubscribe, reconcile.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskStatus
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from .connection import RECOVERABLE, call, make_client, make_node_client, slot_owner
from .deadletter import DeadLetterWriter
from .errors import Unavailable
from .messages import DecodeError, Message, decode, encode
from .resilience import Episode
from .scripts import publish_each
from .settings import BusSettings

log = logging.getLogger(__name__)
Handler = Callable[[Message], Awaitable[None]]
BurstHandler = Callable[[list[Message]], Awaitable[None]]
# messages taken off the connection's buffer at once when they arrive faster than
# they are handled (a fleet-wide change sends a worker hundreds together)
MAX_BURST = 500
Hook = Callable[[], Awaitable[None]]


async def publish(redis: Redis, settings: BusSettings, worker_id: str, message: Message) -> int:
    """Publish to one worker's control channel (SPUBLISH on a cluster); returns how many
    subscribers got it."""
    (receivers,) = await publish_each(redis, [(settings.keys.control(worker_id), encode(message))])
    return receivers


class SilentlyDead(Unavailable):
    """Our PING got no PONG in time: the connection is gone without telling us."""


class SlotMoved(Unavailable):
    """The node we subscribed on no longer serves the shard channel's slot (Redis
    unsubscribed us, or redirected our SSUBSCRIBE): find the owner again."""


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
        self.cluster = settings.cluster
        # the reply types of a plain channel, or of a shard channel on a cluster
        self._subscribed = "ssubscribe" if self.cluster else "subscribe"
        self._message = "smessage" if self.cluster else "message"
        self.node: tuple[str, int] | None = None  # on a cluster: the node subscribed on
        self._token = f"hiscrm-ping-{uuid.uuid4().hex[:8]}"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, reconcile, listen; on any connection loss, back off and start over.
        Signals readiness after the first subscribe and reconcile. An outage is told in
        two lines however many tries it takes: the loss, and the recovery."""
        episode = Episode(log, f"control subscription {self.channel}", self.settings)
        started = False
        while True:
            # on a cluster: a client of the node that serves the channel, once known
            client = None if self.cluster else make_client(self.settings, retries=False)
            pubsub: PubSub | None = None
            delay = 0.0
            try:
                with anyio.fail_after(self._subscribe_deadline):
                    if client is None:
                        client = await self._owner_client()
                    pubsub = client.pubsub()
                    await self._subscribe(pubsub)
                episode.ok()
                self.subscriptions += 1
                log.info(
                    "subscribed to %s%s (%d)",
                    self.channel,
                    "" if self.node is None else f" on {self.node[0]}:{self.node[1]}",
                    self.subscriptions,
                )
                await self._reconcile()
                if not started:
                    task_status.started()
                    started = True
                await self._listen(pubsub)
            except Exception as exc:
                # a lost connection, a moved slot, an error reply (e.g. NOPERM while an
                # operator fixes the user's rules) or a bug: never the end of the
                # worker's subscription
                delay = episode.failed(exc)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await _close(pubsub, client)
            await anyio.sleep(delay)

    @property
    def _subscribe_deadline(self) -> float:
        # the connect itself is under the deadline too: redis-py's handshake waits for
        # replies without a socket timeout, so a path that accepts TCP but is dead
        # would otherwise hang there forever. On a cluster, finding the owner too.
        return self.settings.ping_timeout_s + self.settings.redis_timeout_s

    async def _owner_client(self) -> Redis:
        """A client of the primary that serves the channel's slot now, asked of the
        cluster by a fresh cluster client (whose map is the cluster's current one)."""
        self.node = None
        cluster = make_client(self.settings, retries=False)
        try:
            host, port = await call(slot_owner(cluster, self.channel))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await cluster.aclose()
        self.node = (host, port)
        return make_node_client(self.settings, host, port)

    async def _subscribe(self, pubsub: PubSub) -> None:
        if self.cluster:
            await call(pubsub.ssubscribe(self.channel))
        else:
            await call(pubsub.subscribe(self.channel))
        while True:
            try:
                reply = await call(pubsub.get_message(timeout=self.settings.ping_timeout_s))
            except (rexc.MovedError, rexc.AskError) as exc:
                # a node that stopped serving the slot since we asked who does
                raise SlotMoved(f"{self.channel} is served elsewhere now ({exc})") from exc
            if reply is not None and reply["type"] == self._subscribed:
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
            elif reply["type"] == self._message:
                # a lone message is handled at once (no look for more first: that look
                # would sit on every update's path); what arrived meanwhile, in bursts
                await self._dispatch([reply["data"]])
                while self.burst is not None:
                    burst, ponged, moved = await self._waiting(pubsub)
                    if ponged:
                        ping_sent = None
                    if burst:
                        await self._dispatch(burst)
                    if moved:
                        raise self._moved()
                    if not burst:
                        break
            elif reply["type"] == "sunsubscribe":
                raise self._moved()

    def _moved(self) -> SlotMoved:
        return SlotMoved(f"the node {self.node} unsubscribed us: the slot moved or it is a replica")

    async def _waiting(self, pubsub: PubSub) -> tuple[list[bytes], bool, bool]:
        """The messages already in the connection's buffer (up to MAX_BURST), without
        waiting; whether a PONG was among the replies; and whether the node unsubscribed
        us (a shard channel whose slot moved: the messages before it still count)."""
        burst: list[bytes] = []
        ponged = False
        while len(burst) < MAX_BURST:
            more = await call(pubsub.get_message(timeout=0))  # never waits
            if more is None:
                break
            if more["type"] == "pong":
                ponged = True
            elif more["type"] == self._message:
                burst.append(more["data"])
            elif more["type"] == "sunsubscribe":
                return burst, ponged, True
        return burst, ponged, False

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


async def _close(pubsub: PubSub | None, client: Redis | None) -> None:
    try:
        if pubsub is not None:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
    finally:
        if client is not None:
            await client.aclose()
