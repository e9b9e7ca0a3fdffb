"""The Master: a stateless set of loops over Redis, all in one task group.

ACKs and worker events are read through consumer groups, so two Masters share the
work and a restarted one picks up its own unacknowledged entries. Pending updates,
worker liveness and placement are kept in Redis and changed with atomic scripts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import anyio
from anyio.abc import TaskStatus
from redis.asyncio import Redis

from hiscrm_bus.connection import RECOVERABLE
from hiscrm_bus.errors import AccountNotFound, InvalidAccountConfig
from hiscrm_bus.messages import (
    AccountConfigUpdate,
    AccountConfigUpdateAck,
    CrawlBatch,
    LoginFailed,
    LoginProgress,
    LoginQrCode,
    LoginSuccess,
    Message,
    UpdateReason,
)
from hiscrm_bus.messages import (
    TaskStatus as TaskStatusEvent,
)
from hiscrm_bus.pending import PendingUpdate
from hiscrm_bus.streams import StreamReader

from .assignment import Assigner
from .ingest import IngestStore
from .login import on_login_event, on_login_success, record_session
from .metrics import MasterMetrics
from .settings import MasterSettings
from .updates import Updates

log = logging.getLogger(__name__)


class Master:
    def __init__(self, settings: MasterSettings, redis: Redis) -> None:
        self.settings = settings
        self.id = settings.master_id
        self.redis = redis
        self.keys = settings.keys
        self.updates = Updates(redis, settings, sender=self.id)
        self.tracker = self.updates.tracker
        self.store = self.updates.store
        self.assigner = Assigner(redis, settings, self.updates)
        group = settings.consumer_group
        self.acks = StreamReader(redis, settings, self.keys.acks, group, self.id)
        self.events = StreamReader(redis, settings, self.keys.events, group, self.id)
        self.ingest = StreamReader(redis, settings, self.keys.ingest, group, self.id)
        self.items = IngestStore(redis, self.keys)
        self.metrics = MasterMetrics()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        log.info("master %s starting", self.id)
        async with anyio.create_task_group() as tg:
            await tg.start(self.acks.run_batches, self.on_acks)
            await tg.start(self.events.run, self.on_event)
            await tg.start(self.ingest.run, self.on_batch)
            tg.start_soon(self._every, self.settings.sweep_interval_s, self.sweep, name="sweeper")
            tg.start_soon(
                self._every, self.settings.liveness_interval_s, self.assigner.run_once, name="live"
            )
            if self.settings.metrics_port is not None:
                self.metrics.serve(self.settings.metrics_host, self.settings.metrics_port)
                log.info(
                    "metrics on http://%s:%d/metrics",
                    self.settings.metrics_host,
                    self.settings.metrics_port,
                )
                tg.start_soon(
                    self._every,
                    self.settings.liveness_interval_s,
                    self.refresh_metrics,
                    name="metrics",
                )
            log.info("master %s ready", self.id)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self.metrics.close()

    async def _every(self, interval: float, step: Callable[[], Awaitable[object]]) -> None:
        while True:
            try:
                await step()
            except RECOVERABLE as exc:
                log.warning("master %s: Redis unavailable (%s); will try again", self.id, exc)
            await anyio.sleep(interval)

    async def on_acks(self, messages: list[Message]) -> None:
        """Resolve a read's worth of ACKs in one round trip."""
        acks = [m for m in messages if isinstance(m, AccountConfigUpdateAck)]
        for other in messages:
            if not isinstance(other, AccountConfigUpdateAck):
                log.warning("master %s: unexpected %s on the ACK stream", self.id, other.type)
        for ack, closed in zip(acks, await self.tracker.resolve_many(acks), strict=True):
            self._log_resolved(ack, closed)

    def _log_resolved(
        self, ack: AccountConfigUpdateAck, closed: Sequence[tuple[str, str, float]]
    ) -> None:
        for update_id, status, latency_ms in closed:
            if status == "applied":
                self.metrics.latency.observe(latency_ms / 1000)
                log.info(
                    "update %s for account %s applied by worker %s at version %d in %.1f ms",
                    update_id,
                    ack.account_id,
                    ack.worker_id,
                    ack.applied_version,
                    latency_ms,
                )
            else:
                log.warning(
                    "update %s for account %s rejected by worker %s (version %d kept): %s",
                    update_id,
                    ack.account_id,
                    ack.worker_id,
                    ack.applied_version,
                    ack.error,
                )
        if not closed:
            log.debug(
                "ack from %s for %s version %d closed nothing (duplicate or reconcile)",
                ack.worker_id,
                ack.account_id,
                ack.applied_version,
            )

    async def refresh_metrics(self) -> None:
        alive, _dead = await self.assigner.registry.all()
        self.metrics.refresh(await self.tracker.stats(), alive)

    async def on_event(self, message: Message) -> None:
        if isinstance(message, LoginSuccess):
            ok = await on_login_success(self.updates, message)
            if message.session_id:
                await record_session(
                    self.redis,
                    self.settings,
                    message.session_id,
                    status="success" if ok else "refused",
                    platform_user_id=message.platform_user_id,
                )
        elif isinstance(message, LoginQrCode | LoginProgress | LoginFailed):
            await on_login_event(self.redis, self.settings, message)
        elif isinstance(message, TaskStatusEvent):
            log.info(
                "worker %s: account %s task %s (version %d)%s%s",
                message.worker_id,
                message.account_id,
                message.state,
                message.config_version,
                f": {message.error}" if message.error else "",
                f" [{message.detail}]" if message.detail else "",
            )
        else:
            log.warning("master %s: unexpected %s on the event stream", self.id, message.type)

    async def on_batch(self, message: Message) -> None:
        if not isinstance(message, CrawlBatch):
            log.warning("master %s: unexpected %s on the ingest stream", self.id, message.type)
            return
        added = await self.items.store(message)
        if any(added.values()):
            log.info(
                "account %s: %d new comment(s), %d new DM(s) from worker %s",
                message.account_id,
                added.get("comment", 0),
                added.get("dm", 0),
                message.worker_id,
            )

    async def sweep(self) -> None:
        """Retry the pending updates whose deadline passed; record the last failures."""
        if self.acks.backlogged:
            # ACKs are queued unread: counting them as missing would re-send updates
            # that were applied, and every re-send adds another ACK to the queue
            log.debug("master %s: ACK backlog; retries wait for it to drain", self.id)
            return
        swept = await self.tracker.sweep()
        retries: list[tuple[AccountConfigUpdate, str]] = []
        for update in swept.retry:
            target = await self._retarget(update)
            if target is None:
                continue
            log.warning(
                "no ACK from worker %s for update %s (account %s version %d); attempt %d/%d",
                target,
                update.update_id,
                update.account_id,
                update.version,
                update.attempts,
                self.settings.max_attempts,
            )
            retries.append((self._resend(update), target))
        if retries:
            await self.updates.publish_many(retries)
        for update in swept.failed:
            await self.store.set_stale(update.account_id, True)
            log.error(
                "config update %s for account %s version %d failed: no ACK from worker %s "
                "after %d attempts; account marked config_stale",
                update.update_id,
                update.account_id,
                update.version,
                update.worker_id,
                update.attempts,
            )

    async def _retarget(self, update: PendingUpdate) -> str | None:
        """The worker that owns the account now (the ACK must come from it)."""
        try:
            config = await self.store.get(update.account_id)
        except AccountNotFound:
            await self.tracker.cancel(update, "account removed")
            return None
        except InvalidAccountConfig as exc:
            # the hash no longer validates: the owner will reject it; keep retrying
            log.warning("account %s: %s", update.account_id, exc)
            return update.worker_id
        if config.worker_id is None:
            return None  # will fail in time unless assignment sends a newer one
        if config.worker_id != update.worker_id:
            await self.tracker.retarget(update.update_id, config.worker_id)
        return config.worker_id

    def _resend(self, update: PendingUpdate) -> AccountConfigUpdate:
        reason: UpdateReason = update.reason  # type: ignore[assignment]
        return AccountConfigUpdate(
            sender=self.id,
            update_id=update.update_id,
            account_id=update.account_id,
            config_version=update.version,
            reason=reason,
            updated_fields=update.fields,
            attempt=update.attempts,
        )
