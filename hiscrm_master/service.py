"""The Master: a stateless set of loops over Redis, all in one task group.

ACKs and worker events are read through consumer groups, so two Masters share the
work and a restarted one picks up its own unacknowledged entries. Each worker writes to
streams of its own (and, with per-worker Redis users, only it can), so the stream names
the sender; a message about an account is accepted only from the account's owner at
that moment, anything else is dead-lettered with the reason. Pending updates,
worker liveness and placement are kept in Redis and changed with atomic scripts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskStatus
from redis.asyncio import Redis

from hiscrm_bus.connection import RECOVERABLE, call, call_each, text
from hiscrm_bus.deadletter import DeadLetters
from hiscrm_bus.errors import AccountNotFound, InvalidAccountConfig, NotOwner
from hiscrm_bus.keys import StreamKind
from hiscrm_bus.limits import clip
from hiscrm_bus.messages import (
    AccountConfigAcks,
    AccountConfigUpdate,
    AccountConfigUpdateAck,
    CrawlBatch,
    DeadLetterReport,
    DecodeError,
    LoginExpired,
    LoginFailed,
    LoginProgress,
    LoginQrCode,
    LoginSuccess,
    Message,
    UpdateReason,
    encode,
)
from hiscrm_bus.messages import (
    TaskStatus as TaskStatusEvent,
)
from hiscrm_bus.pending import PendingUpdate
from hiscrm_bus.resilience import Episode, every
from hiscrm_bus.streams import Received, StreamReader, trim_consumed

from .archive import Archive, Arrival, Stored
from .assignment import Assigner
from .database import DatabaseUnavailable, refused_value
from .legacy_items import move_legacy_items
from .login import on_login_event, on_login_expired, on_login_success, record_session
from .metrics import MasterMetrics
from .settings import MasterSettings
from .updates import Updates

log = logging.getLogger(__name__)
MASTER_GRACE_PASSES = 15
# the worker streams whose handled entries are trimmed: not events, which those who
# follow a login read after the Master has handled them (from a cursor, in no group;
# a console's event stream may reconnect and read again); the worker caps them (MAXLEN)
TRIMMED: tuple[StreamKind, ...] = ("acks", "ingest")
# entries per stream one read of acks or events takes
SMALL_READ = 10
# events that speak about one account: accepted only from that account's owner
_ABOUT_ACCOUNT = (
    LoginSuccess,
    LoginQrCode,
    LoginProgress,
    LoginFailed,
    LoginExpired,
    TaskStatusEvent,
)


# the most items one ingest transaction writes: a read of many busy workers' streams is
# split, so SQLite's write lock is held for a fraction of a second at a time (the
# entries are acknowledged after the last part's commit; a part stored twice is a no-op)
TRANSACTION_ITEMS = 5000


def _parts(
    accepted: list[tuple[Received, Arrival]], limit: int
) -> list[list[tuple[Received, Arrival]]]:
    """``accepted`` in order, cut into runs of at most ``limit`` items (a batch is never
    cut: one bigger than ``limit`` is a run of its own)."""
    parts: list[list[tuple[Received, Arrival]]] = []
    size = limit
    for pair in accepted:
        items = len(pair[1].batch.items)
        if size + items > limit or not parts:
            parts.append([])
            size = 0
        parts[-1].append(pair)
        size += items
    return parts


# KEYS: removals; ARGV: account id, the removal time the data was deleted up to
_DONE_REMOVAL = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


def failure(exc: BaseException) -> str:
    """Why handling a message failed, as one line for its dead letter (the first line of
    the error only: a validation error's details may quote the values it refused)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return clip(f"failed: {type(exc).__name__}" + (f": {first}" if first else ""), 300)


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
        self.deadletters = DeadLetters(redis, settings)
        group = settings.consumer_group
        # acks and events a few per stream and read: any entry may be as large as Redis
        # takes (proto-max-bulk-len), and a read holds them all at once
        self.acks = self._reader("acks", group, count=SMALL_READ)
        self.events = self._reader("events", group, count=SMALL_READ)
        self.ingest = self._reader("ingest", group)
        self.archive = Archive.of(settings)
        self._legacy_moved = False
        self._done_removal = redis.register_script(_DONE_REMOVAL)
        self._next_prune = 0.0
        self._backlog_since: float | None = None  # when the ACK backlog began, if one has
        self._backlog_told = False
        self.metrics = MasterMetrics()

    def _reader(self, kind: StreamKind, group: str, *, count: int = 100) -> StreamReader:
        """A reader of one kind of stream of every known worker (alive or not: a dead
        worker's last words are read too)."""

        async def discover() -> dict[str, str]:
            ids = await self.assigner.registry.ids()
            return {self.keys.worker_stream(w, kind): w for w in ids}

        # a short block: a newly registered worker's streams join the read soon. Only a
        # live worker's streams are made: a name only in the index costs no key
        return StreamReader(
            self.redis,
            self.settings,
            None,
            group,
            self.id,
            discover=discover,
            live=self.assigner.registry.alive,
            block_ms=500,
            count=count,
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        log.info("master %s starting", self.id)
        s = self.settings
        # worker users' read access, as the assignments say (a restarted Redis, or
        # changes made while no Master ran); ``liveness`` re-checks it every pass
        try:
            await self.updates.grants.ensure()
        except Exception as exc:
            log.warning("master %s: grants not applied yet (%s); liveness retries", self.id, exc)
        async with anyio.create_task_group() as tg:
            await tg.start(self.acks.run_received, self.on_acks)
            await tg.start(self.events.run_received, self.on_events)
            await tg.start(self.ingest.run_received, self.on_batches)
            tg.start_soon(self._loop, "sweeper", s.sweep_interval_s, self.sweep)
            tg.start_soon(self._loop, "liveness", s.liveness_interval_s, self.liveness)
            tg.start_soon(self._loop, "archive", s.archive_interval_s, self.tend_archive)
            if s.metrics_port is not None:
                self.metrics.serve(s.metrics_host, s.metrics_port)
                log.info("metrics on http://%s:%d/metrics", s.metrics_host, s.metrics_port)
                tg.start_soon(self._loop, "metrics", s.liveness_interval_s, self.refresh_metrics)
            log.info("master %s ready", self.id)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self.metrics.close()
                with anyio.CancelScope(shield=True):
                    await self.archive.close()

    async def _loop(
        self, name: str, interval: float, step: Callable[[], Awaitable[object]]
    ) -> None:
        await every(interval, step, Episode(log, f"master {self.id}: {name}", self.settings))

    async def liveness(self) -> None:
        """Say we are alive, then move dead workers' accounts and place unowned ones."""
        # the time after which diagnose may call this Master gone: many missed passes
        window = max(MASTER_GRACE_PASSES * self.settings.liveness_interval_s, 3.0)
        await call(self.redis.zadd(self.keys.masters, {self.id: time.time() + window}))
        await self.tracker.publish_policy()
        await self.updates.grants.ensure()
        await self.assigner.run_once()

    async def reject(self, received: Received, reason: str) -> None:
        """Dead-letter a message its sender had no right to send."""
        message = received.message
        account = getattr(message, "account_id", "-")
        log.warning(
            "master %s: %s from worker %s about account %s refused: %s",
            self.id,
            message.type,
            received.source,
            account,
            reason,
        )
        raw = encode(message)
        await self.deadletters.write(received.stream, DecodeError(reason, raw))

    def _sender_ok(self, received: Received) -> bool:
        claimed = getattr(received.message, "worker_id", received.source)
        return bool(received.source) and claimed == received.source

    async def _owners(self, account_ids: Sequence[str]) -> dict[str, str | None]:
        """Each account's owner now, in one round trip."""
        unique = sorted(set(account_ids))
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in unique:
                pipe.hget(self.keys.account(account_id), "worker_id")
            # a Redis still loading or full is an outage, not an answer: the entries stay
            # pending and are judged once Redis answers
            replies = await call_each(pipe.execute(raise_on_error=False))
        return {
            a: (text(r) if isinstance(r, bytes) else None)
            for a, r in zip(unique, replies, strict=True)
        }

    async def on_acks(self, received: list[Received]) -> None:
        """Resolve a read's worth of ACKs in one round trip; only the account's owner
        can resolve its updates, and only as itself."""
        acks: list[tuple[Received, AccountConfigUpdateAck]] = []
        for r in received:
            if not isinstance(r.message, AccountConfigUpdateAck | AccountConfigAcks):
                await self.reject(r, "wrong_stream")
            elif not self._sender_ok(r):
                await self.reject(r, "wrong_sender")
            elif isinstance(r.message, AccountConfigAcks):
                # each of a batch's ACKs judged (and, refused, dead-lettered) on its own
                acks.extend((replace(r, message=ack), ack) for ack in r.message.each())
            else:
                acks.append((r, r.message))
        results = await self.tracker.resolve_many([a for _r, a in acks])
        for (r, ack), closed in zip(acks, results, strict=True):
            await self._one(r, partial(self._judge_ack, ack=ack, closed=closed))

    async def _judge_ack(
        self,
        received: Received,
        *,
        ack: AccountConfigUpdateAck,
        closed: Sequence[tuple[str, str, float]] | Exception | None,
    ) -> None:
        if isinstance(closed, Exception):  # its own error reply (e.g. WRONGTYPE)
            raise closed
        if closed is None:
            await self.reject(received, "not_owner")
        else:
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
        logins = await self.store.login_statuses()
        self.metrics.refresh(await self.tracker.stats(), alive, logins)

    async def on_events(self, received: list[Received]) -> None:
        """Worker events, each accepted only from the worker that owns its account."""
        about = [r for r in received if isinstance(r.message, _ABOUT_ACCOUNT)]
        owners = await self._owners([r.message.account_id for r in about])  # type: ignore[union-attr]
        for r in received:
            await self._one(r, partial(self._on_event_read, owners=owners))

    async def _one(self, received: Received, handle: Callable[[Received], Awaitable[None]]) -> None:
        """Handle one message of a read. A Redis or database outage propagates (the
        whole read stays pending, to be read again); any other failure dead-letters this
        message alone, with why, and the rest of the read goes on."""
        try:
            await handle(received)
        except RECOVERABLE:
            raise
        except Exception as exc:
            log.debug("master %s: handling %s failed", self.id, received.message.type, exc_info=exc)
            await self.reject(received, failure(exc))

    async def _on_event_read(self, r: Received, *, owners: dict[str, str | None]) -> None:
        """One event of a read, judged by its sender and the account's owner."""
        message = r.message
        if not self._sender_ok(r):
            await self.reject(r, "wrong_sender")
        elif isinstance(message, DeadLetterReport):
            # apart from our own dead letters, counted per worker, capped per minute
            raw = message.raw.encode("utf-8", "surrogatepass")
            error = DecodeError(message.reason, raw)
            await self.deadletters.report(r.source, message.source, error)
        elif not isinstance(message, _ABOUT_ACCOUNT):
            await self.reject(r, "wrong_stream")
        elif owners.get(message.account_id) != r.source:
            await self.reject(r, "not_owner")
        else:
            await self.on_event(message, r)

    async def on_event(self, message: Message, received: Received | None = None) -> None:
        if isinstance(message, LoginSuccess):
            try:
                ok = await on_login_success(self.updates, message, owner=message.worker_id)
            except NotOwner:
                if received is not None:
                    await self.reject(received, "not_owner")
                return
            if message.session_id:
                await record_session(
                    self.redis,
                    self.settings,
                    message.session_id,
                    status="success" if ok else "refused",
                    platform_user_id=message.platform_user_id,
                )
        elif isinstance(message, LoginExpired):
            try:
                await on_login_expired(self.updates, message)
            except NotOwner:
                if received is not None:
                    await self.reject(received, "not_owner")
        elif isinstance(message, LoginQrCode | LoginProgress | LoginFailed):
            await on_login_event(self.redis, self.settings, message)
        elif isinstance(message, TaskStatusEvent):
            if message.state == "error" and message.error:
                await self._record_crawl_error(message)
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

    async def _record_crawl_error(self, message: TaskStatusEvent) -> None:
        """A task's crawl error, as a crawl run in the database. Best effort, bounded:
        the event stream does not wait for the database (the error stays in this log,
        the worker's heartbeat and ``diagnose``)."""
        with anyio.move_on_after(2.0):
            try:
                await self.archive.record_error(
                    message.message_id,
                    message.account_id,
                    message.worker_id,
                    message.error or "",
                    message.sent_at,
                )
            except DatabaseUnavailable as exc:
                log.warning("account %s: crawl error not recorded: %s", message.account_id, exc)

    async def on_batches(self, received: list[Received]) -> None:
        """Store a read's crawl batches in the database, in one transaction; only the
        account's owner may send them. Returns after the commit: the reader XACKs the
        entries then (a DatabaseUnavailable leaves them pending, to be read again)."""
        batches = [r for r in received if isinstance(r.message, CrawlBatch)]
        owners = await self._owners([r.message.account_id for r in batches])  # type: ignore[union-attr]
        accepted: list[tuple[Received, Arrival]] = []
        for r in received:
            message = r.message
            if not isinstance(message, CrawlBatch):
                await self.reject(r, "wrong_stream")
            elif not self._sender_ok(r):
                await self.reject(r, "wrong_sender")
            elif owners.get(message.account_id) != r.source:
                await self.reject(r, "not_owner")
            else:
                accepted.append((r, Arrival(message, r.added_ms)))
        if not accepted:
            return
        for part in _parts(accepted, TRANSACTION_ITEMS):
            for result in await self._store(part):
                self._log_stored(result)

    async def _store(self, accepted: list[tuple[Received, Arrival]]) -> list[Stored]:
        """Store batches in one transaction. When the database refuses a value in
        them, store them one by one and dead-letter only a batch whose own values it
        refuses. Any other failure (down, locked, read-only, full, or a bug of ours)
        is no fault of the batches: it raises DatabaseUnavailable, and the entries stay
        pending, to be stored once the database takes them."""
        try:
            return await self.archive.store([a for _r, a in accepted])
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            if not refused_value(exc):
                raise self._not_stored(exc) from exc
            log.warning("master %s: the database refused a read's batches (%s)", self.id, exc)
        stored: list[Stored] = []
        for r, arrival in accepted:
            try:
                stored += await self.archive.store([arrival])
            except DatabaseUnavailable:
                raise
            except Exception as one:
                if not refused_value(one):
                    raise self._not_stored(one) from one
                await self.reject(r, f"database_refused: {_first_line(one)}")
        return stored

    def _not_stored(self, error: Exception) -> DatabaseUnavailable:
        # a failure that is not the batches' fault: retried (the stream reader backs
        # off and logs it once per episode), never dead-lettered
        log.debug("master %s: storing crawl batches failed", self.id, exc_info=error)
        return DatabaseUnavailable(
            f"database {self.archive.shown} failed while storing crawled items (they stay "
            f"pending and are stored once it takes them): {_first_line(error)}"
        )

    def _log_stored(self, result: Stored) -> None:
        if result.refused:
            log.info(
                "account %s: crawl batch from worker %s dropped: the account was removed",
                result.account_id,
                result.worker_id,
            )
        elif any(result.new.values()):
            log.info(
                "account %s: %d new comment(s), %d new DM(s) from worker %s",
                result.account_id,
                result.new.get("comment", 0),
                result.new.get("dm", 0),
                result.worker_id,
            )

    async def tend_archive(self) -> None:
        """The database's housekeeping: bring the schema up to date; move crawled items
        an older version kept in Redis (once); delete removed accounts' data; apply
        retention (every ``retention_interval_s``)."""
        # what was handled and acknowledged is of no use in Redis any more: every
        # worker stream keeps only what no Master has handled yet (a worker's acks and
        # events are never trimmed by anyone else)
        ids = await self.assigner.registry.ids()
        handled = [self.keys.worker_stream(w, kind) for w in ids for kind in TRIMMED]
        await trim_consumed(self.redis, handled, self.settings.consumer_group)
        await self.archive.ready()
        if not self._legacy_moved:
            moved = await move_legacy_items(self.redis, self.keys, self.archive, self.id)
            if moved:
                log.info("master %s: %d Redis-held item(s) moved to the database", self.id, moved)
            self._legacy_moved = True
        removals: list[Any] = await call(
            self.redis.zrange(self.keys.removals, 0, 99, withscores=True)
        )
        for member, score in removals:
            account_id = text(member)
            done = await self.archive.forget(account_id, int(score))
            # unless removed once more meanwhile (then the next pass deletes again)
            await call(self._done_removal(keys=[self.keys.removals], args=[member, int(score)]))
            log.info(
                "account %s: %d crawled item(s) deleted from the database (removed)",
                account_id,
                done.items,
            )
        if self.settings.retention_days is not None and time.monotonic() >= self._next_prune:
            gone = await self.archive.prune()
            self._next_prune = time.monotonic() + self.settings.retention_interval_s
            if gone:
                log.info(
                    "master %s: %d crawled item(s) older than %g days deleted",
                    self.id,
                    gone,
                    self.settings.retention_days,
                )

    def _backlog_waits(self) -> bool:
        """Whether retries wait for an ACK backlog to drain: ACKs queued unread would
        count as missing, re-sending applied updates (each re-send adds another ACK).
        For one update's whole retry budget at most: a worker that keeps its stream
        full (junk ACKs, faster than a read takes them) must not stop every retry and
        failure in the fleet."""
        if not self.acks.backlogged:
            self._backlog_since, self._backlog_told = None, False
            return False
        now = time.monotonic()
        if self._backlog_since is None:
            self._backlog_since = now
        waited = now - self._backlog_since
        if waited < self.settings.ack_timeout_s * self.settings.max_attempts:
            log.debug("master %s: ACK backlog; retries wait for it to drain", self.id)
            return True
        if not self._backlog_told:
            log.warning(
                "master %s: an ACK backlog for %.0f s; retrying and failing updates anyway",
                self.id,
                waited,
            )
            self._backlog_told = True
        return False

    async def sweep(self) -> None:
        """Retry the pending updates whose deadline passed; record the last failures."""
        if self._backlog_waits():
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
            await self.tracker.retarget(update, config.worker_id)
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


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:300]
