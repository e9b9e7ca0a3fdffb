"""The Worker service: register and heartbeat, follow the control channel, reconcile,
hot-swap task configs and ACK every update.

Correctness does not rest on pub/sub: after every (re)subscribe and on a fixed
interval the worker compares the versions it applied with the hashes' versions, in one
pipelined round trip, and reloads what is behind.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from redis import exceptions as rexc
from redis.asyncio import Redis

from hiscrm_bus import __version__
from hiscrm_bus.accounts import AccountStore, from_hash
from hiscrm_bus.connection import call_each
from hiscrm_bus.control import ControlSubscription
from hiscrm_bus.errors import InvalidAccountConfig, WorkerIdInUse
from hiscrm_bus.keys import StreamKind
from hiscrm_bus.limits import MAX_MESSAGE_BYTES, MAX_VERSION, clip, utcnow
from hiscrm_bus.messages import (
    MAX_ACK_ERROR_CHARS,
    MAX_ACKS_PER_MESSAGE,
    AccountConfigAcks,
    AccountConfigUpdate,
    AccountConfigUpdateAck,
    AckEntry,
    CrawlBatch,
    LoginExpired,
    LoginRequest,
    Message,
)
from hiscrm_bus.messages import TaskStatus as TaskStatusEvent
from hiscrm_bus.resilience import Episode, every
from hiscrm_bus.streams import append_many
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry

from .browser import BrowserPool, check_chromium
from .login import LoginRunner
from .outbox import DeadLettersToMaster, Outbox
from .platforms import BROWSER_PLATFORMS, CrawledItem, build_platforms
from .runner import TaskRunner
from .settings import WorkerSettings
from .task import MonitorTask
from .vault import SessionVault, read_key_file

log = logging.getLogger(__name__)
INGEST_BATCH = 1000  # items per crawl batch message (a message holds at most 5000)
# the items' JSON per crawl batch message: the rest of the 4 MiB bound is the envelope's
# (a thousand items of 20,000 characters would make 60 MB)
INGEST_BATCH_BYTES = MAX_MESSAGE_BYTES - 512 * 1024
# what a version probe saw: the stored bytes, None (no such hash or field), or an error
# reply's class and text (WRONGTYPE); a rejected account is read again only once its
# probe differs from what was rejected
Fingerprint = bytes | str | tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class Applied:
    """The result of bringing one account up to the version in its hash."""

    ok: bool
    applied_version: int
    seen_version: int
    error: str | None = None
    # ACK it: the account is ours (a removed or moved one is not ours to speak for)
    mine: bool = True
    # what applying did, for a reconcile's one summary line ("" when nothing)
    did: str = ""


class Worker:
    def __init__(self, settings: WorkerSettings, redis: Redis) -> None:
        self.settings = settings
        self.id = settings.worker_id
        self.redis = redis
        self.keys = settings.keys
        self.store = AccountStore(redis, self.keys)
        self.registry = WorkerRegistry(redis, self.keys)
        # what we send the Master: in order, task states coalesced, never dropped
        self.outbox = Outbox(redis, settings, self.id)
        chromium = settings.chromium
        if BROWSER_PLATFORMS & set(settings.platforms):
            chromium = check_chromium(chromium)
        vault = (
            SessionVault(redis, self.keys, read_key_file(settings.session_key_file), self.id)
            if settings.session_key_file is not None
            else None
        )
        self.pool = BrowserPool(chromium, settings.data_dir, self._on_recover, vault)
        self.platforms = build_platforms(settings.platforms, self.pool, settings.sandbox_url)
        self.runner = TaskRunner(
            self.platforms, self._on_task_state, self._on_items, self._on_expired
        )
        self.logins = LoginRunner(self.store, self.platforms, self.id, self.outbox, settings)
        self.subscription = ControlSubscription(
            settings,
            self.id,
            self.handle,
            self.reconcile,
            DeadLettersToMaster(self.outbox),
            burst=self.handle_burst,
        )
        # the version in force per account this worker runs, and the fingerprint of
        # the hash we last rejected, so reconcile does not reject it again and again;
        # both, and the locks, only for accounts this worker has (runs, or is assigned)
        self.applied: dict[str, int] = {}
        self.rejected: dict[str, Fingerprint] = {}
        # uncontended almost always: the fast path must not yield to the event loop
        self._locks: defaultdict[str, anyio.Lock] = defaultdict(
            lambda: anyio.Lock(fast_acquire=True)
        )
        self.started_at = utcnow()
        self.instance = uuid.uuid4().hex
        self.reconciles = 0
        self.tg: TaskGroup | None = None
        self.streams = self.outbox.streams
        # the assignment set as the last reconcile read it; and whether an account of
        # it was not readable (NOPERM) then
        self._assigned: set[str] = set()
        self._grant_wait = False

    # lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        log.info("worker %s starting (platforms %s)", self.id, ",".join(self.platforms))
        async with anyio.create_task_group() as tg:
            self.tg = tg
            await tg.start(self.runner.run)
            await self._safe(self.heartbeat())
            tg.start_soon(
                self._loop, "heartbeat", self.settings.heartbeat_interval_s, self.heartbeat
            )
            tg.start_soon(self.outbox.run, name="outbox")
            await tg.start(self.subscription.run)  # first reconcile happens in here
            tg.start_soon(
                self._loop, "reconcile", self.settings.reconcile_interval_s, self.reconcile
            )
            log.info("worker %s ready", self.id)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    for account_id in self.runner.ids():
                        self.runner.stop(account_id)
                    await self._safe(self.heartbeat())
                    await self._safe(self.registry.release(self.info()))
                await self.pool.close()
                log.info("worker %s stopped", self.id)

    async def claim(self) -> None:
        """Hold this worker id, or raise WorkerIdInUse naming where it runs. A holder on
        this host whose process is gone (a crash) is taken over at once."""
        me = self.info()
        holder = await self.registry.claim(me, self.settings.heartbeat_ttl_s)
        if holder is None:
            return
        if holder.host == me.host and holder.pid and not _pid_alive(holder.pid):
            log.info("worker %s: taking over from a dead process (pid %d)", self.id, holder.pid)
            await self.registry.take_over(me)
            return
        seen = holder.heartbeat_at.isoformat(timespec="seconds") if holder.heartbeat_at else "?"
        raise WorkerIdInUse(
            f"worker id {self.id} is in use by host {holder.host or '?'} pid {holder.pid} "
            f"(last heartbeat {seen}); stop it, or give this worker another --id "
            f"(the id frees {self.settings.heartbeat_ttl_s:g} s after that worker stops)"
        )

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            capacity=self.settings.capacity,
            platforms=tuple(self.platforms),
            started_at=self.started_at,
            subscriptions=self.subscription.subscriptions,
            instance=self.instance,
            tasks=self.runner.reports(),
        )

    async def heartbeat(self) -> None:
        await self.registry.heartbeat(self.info(), self.settings.heartbeat_ttl_s)

    async def _loop(self, name: str, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        episode = Episode(log, f"worker {self.id}: {name}", self.settings)
        await every(interval, step, episode, first_delay=interval)

    async def _safe(self, aw: Awaitable[None]) -> None:
        try:
            await aw
        except Exception as exc:
            log.warning("worker %s: %s; will try again", self.id, exc)

    # control messages

    async def handle(self, message: Message) -> None:
        if isinstance(message, AccountConfigUpdate):
            await self.on_config_update(message)
        elif isinstance(message, LoginRequest):
            if self.tg is not None:
                self.tg.start_soon(self._login, message, name=f"login:{message.account_id}")
        else:
            log.warning("worker %s: ignoring unexpected %s", self.id, message.type)

    async def _login(self, request: LoginRequest) -> None:
        """One login, beside the worker's other tasks: nothing it raises may reach the
        worker's task group (that would end the worker, and the Master's re-sent request
        would end the next one too)."""
        try:
            await self.logins.run(request)
        except Exception:
            log.exception(
                "worker %s: login %s for %s failed unexpectedly",
                self.id,
                request.session_id,
                request.account_id,
            )

    async def handle_burst(self, messages: list[Message]) -> None:
        """Messages that arrived together: the config updates among them are answered
        in bulk (see on_config_updates), then the rest one by one, in order; what fails
        costs only itself (the Master re-sends what it did not hear back about)."""
        updates = [m for m in messages if isinstance(m, AccountConfigUpdate)]
        if updates:
            await self._safe(self.on_config_updates(updates))
        for message in messages:
            if not isinstance(message, AccountConfigUpdate):
                await self._safe(self.handle(message))

    async def on_config_update(self, update: AccountConfigUpdate) -> None:
        await self.on_config_updates([update])

    async def on_config_updates(self, updates: list[AccountConfigUpdate]) -> None:
        """Apply updates and ACK each: every hash that needs reading is read in one
        round trip and every ACK written in another, however many updates there are."""
        for update in updates:
            log.info(
                "received account config update for %s: version %d, reason %s, fields %s, "
                "update %s",
                update.account_id,
                update.config_version,
                update.reason,
                ",".join(update.updated_fields) or "-",
                update.update_id,
            )
        results: dict[str, Applied] = {}
        applied_now = self.applied
        behind = sorted(
            {u.account_id for u in updates if u.config_version > applied_now.get(u.account_id, 0)}
        )
        unread: Exception | None = None
        async with AsyncExitStack() as held:
            # only the accounts read are locked (a reconcile skips locked ones), in one
            # order, so two bursts never wait for each other crosswise
            for account_id in behind:
                await held.enter_async_context(self._locks[account_id])
                log.info("reloading configuration for account %s", account_id)
            try:
                raws = await self.store.get_each(behind) if behind else []
            except Exception as exc:
                unread = exc  # the ones already applied are still ACKed below
            else:
                for account_id, raw in zip(behind, raws, strict=True):
                    results[account_id] = self._apply(account_id, raw)
        for account_id in behind:  # the accounts that left us, now their locks are free
            self._drop_lock(account_id)
        acks: list[AccountConfigUpdateAck] = []
        for update in updates:
            result = results.get(update.account_id)
            if result is None and unread is not None and update.account_id in behind:
                continue  # not read: no answer; the Master re-sends it
            if result is None:
                applied = self.applied.get(update.account_id, 0)
                log.info(
                    "account %s: version %d already applied (have %d); update %s ignored",
                    update.account_id,
                    update.config_version,
                    applied,
                    update.update_id,
                )
                result = Applied(True, applied, update.config_version)
            if result.mine:
                acks.append(self._ack_message(update.account_id, result, update.update_id))
        await self._send_acks(acks)
        if unread is not None:
            raise unread

    def _ack_entry(self, account_id: str, result: Applied) -> dict[str, Any]:
        """One account's entry of a batched ACK, as the fields of an AckEntry: the batch
        validates all of them in one call (10,000 model constructions cost a reconcile
        more than the rest of its ACK writing)."""
        return {
            "account_id": account_id,
            "applied_version": result.applied_version,
            "seen_version": result.seen_version,
            "ok": result.ok,
            "error": clip(result.error) if result.error else None,
        }

    def _ack_message(
        self, account_id: str, result: Applied, update_id: str = ""
    ) -> AccountConfigUpdateAck:
        return AccountConfigUpdateAck(
            sender=self.id,
            update_id=update_id,
            account_id=account_id,
            worker_id=self.id,
            applied_version=result.applied_version,
            seen_version=result.seen_version,
            ok=result.ok,
            error=clip(result.error) if result.error else None,
        )

    def _apply(
        self, account_id: str, raw: dict[Any, Any] | Exception, *, quiet: bool = False
    ) -> Applied:
        """Bring one account to the version in ``raw`` (its HGETALL, or the error reply
        that read got). Never raises: whatever is stored is this account's problem.
        ``quiet``: the routine outcomes are not logged one by one (a reconcile logs them
        in one line); errors always are."""
        try:
            return self._apply_unguarded(account_id, raw, quiet)
        except Exception as exc:
            log.exception("account %s: applying its configuration failed", account_id)
            applied = self.applied.get(account_id, 0)
            reason = clip(f"{type(exc).__name__}: {exc}")
            return Applied(False, applied, applied, reason, did="rejected")

    def _forget(self, account_id: str) -> None:
        """The account left this worker (moved, removed, no longer readable)."""
        self.runner.stop(account_id)
        self.applied.pop(account_id, None)
        self.rejected.pop(account_id, None)
        self._drop_lock(account_id)

    def _drop_lock(self, account_id: str) -> None:
        """Drop the lock of an account this worker no longer has, unless a task holds
        or awaits it (a second lock for the account would let two apply at once)."""
        lock = self._locks.get(account_id)
        if (
            lock is None
            or lock.locked()
            or lock.statistics().tasks_waiting
            or account_id in self.applied
            or account_id in self.rejected
            or account_id in self.runner
        ):
            return
        del self._locks[account_id]

    def _reject(
        self, account_id: str, fingerprint: Fingerprint, quiet: bool, why: str, *args: object
    ) -> str:
        """Remember what was rejected and say why: an error the first time, an info line
        (none when ``quiet``) when it is what was rejected last time. Returns what was
        done, for the reconcile's summary."""
        again = account_id in self.rejected and self.rejected[account_id] == fingerprint
        self.rejected[account_id] = fingerprint
        if not again or not quiet:
            log.log(logging.INFO if again else logging.ERROR, why, *args)
        return "rejected again" if again else "rejected"

    def _apply_unguarded(
        self, account_id: str, raw: dict[Any, Any] | Exception, quiet: bool
    ) -> Applied:
        applied = self.applied.get(account_id, 0)
        if isinstance(raw, rexc.NoPermissionError) and account_id in self._assigned:
            # still ours, but not readable yet: a restarted Redis forgot the grant until
            # the Master re-applies it. Keep running what we have; look again soon.
            if not self._grant_wait:
                log.warning("account %s: waiting for read access (NOPERM)", account_id)
            self._grant_wait = True
            return Applied(True, applied, applied, mine=False)
        if isinstance(raw, rexc.NoPermissionError):
            # the Master revoked our read access: the account moved or was removed
            self._forget(account_id)
            if not quiet:
                log.info("account %s: no longer readable by us; task stopped", account_id)
            return Applied(True, applied, applied, mine=False, did="stopped")
        if isinstance(raw, Exception):
            did = self._reject(
                account_id,
                _fingerprint(raw),
                quiet,
                "account %s: its hash cannot be read (%s); keeping version %d",
                account_id,
                raw,
                applied,
            )
            error = clip(f"account hash unreadable: {raw}")
            return Applied(False, applied, applied, error, did=did)
        if not raw:  # removed
            self._forget(account_id)
            if not quiet:
                log.info("account %s: removed; task stopped", account_id)
            return Applied(True, applied, applied, mine=False, did="stopped")
        owner = _field(raw, "worker_id")
        try:
            config = from_hash(raw)
        except InvalidAccountConfig as exc:
            seen = _version_of(raw)
            did = self._reject(
                account_id,
                _stored_version(raw),
                quiet,
                "account %s: version %d rejected, keeping version %d: %s",
                account_id,
                seen,
                applied,
                exc,
            )
            error = clip(f"invalid config: {exc}")
            return Applied(False, applied, seen, error, mine=owner == self.id, did=did)
        version = config.config_version
        if version == applied:
            return Applied(True, applied, version, mine=owner == self.id)
        if version < applied:
            # the hash went back: Redis lost writes we had applied (it restarted from an
            # older copy, or a replica without them took over). What is stored is the
            # truth, and the next write will reuse the versions we saw: run it now
            log.warning(
                "account %s: stored version %d is below the applied %d (Redis lost "
                "writes); running what is stored",
                account_id,
                version,
                applied,
            )
        if config.worker_id != self.id:
            self._forget(account_id)
            if not quiet:
                log.info(
                    "account %s: now owned by %s; task stopped here", account_id, config.worker_id
                )
            return Applied(True, version, version, mine=False, did="moved away")
        if config.platform not in self.platforms:
            error = f"platform {config.platform!r} is not supported by worker {self.id}"
            did = self._reject(
                account_id, _stored_version(raw), quiet, "account %s: %s", account_id, error
            )
            return Applied(False, applied, version, error, did=did)
        did = "swapped" if account_id in self.runner else "started"
        self.runner.apply(config, quiet=quiet)
        if not quiet:
            log.info("account config reloaded for %s: version %d", account_id, version)
        self.applied[account_id] = version
        self.rejected.pop(account_id, None)
        return Applied(True, version, version, did=did)

    # reconcile

    async def reconcile(self) -> None:
        """Reload every account whose hash version is ahead of what we applied."""
        self.reconciles += 1
        mine = set(await self.store.ids_of_worker(self.id))
        self._assigned = mine
        candidates = mine | set(self.runner.ids())
        self._forget_others(candidates)
        # an account we never applied nor rejected is behind by definition: only the
        # known ones need their version probed (on a cold start, none do)
        known = sorted(a for a in candidates if a in self.applied or a in self.rejected)
        probes = await self._probe(known) if known else {}
        behind = sorted(candidates - set(known)) + [
            a for a, seen in probes.items() if self._behind(a, seen, mine)
        ]
        if not behind:
            return
        before = {a: self.applied.get(a) for a in behind}
        raws = await self.store.get_each(behind)
        entries: list[dict[str, Any]] = []
        done: Counter[str] = Counter()
        with self.runner.deferred():
            with _collector_paused():
                self._apply_all(behind, raws, before, entries, done)
            if self._grant_wait and self.tg is not None:
                self._grant_wait = False
                self.tg.start_soon(self._reconcile_soon)
            await self._ack_many(entries)
        log.info(
            "worker %s: reconcile brought %d account(s) up to date: %s",
            self.id,
            len(behind),
            ", ".join(f"{n} {what}" for what, n in sorted(done.items())) or "none free",
        )

    def _forget_others(self, candidates: set[str]) -> None:
        """What we kept about accounts neither assigned to us nor running here (they
        moved or were removed while we did not hear of it): a reconcile never looks at
        them again, so it is dropped (a lock in use stays until it is free)."""
        for account_id in [a for a in self.applied if a not in candidates]:
            del self.applied[account_id]
        for account_id in [a for a in self.rejected if a not in candidates]:
            del self.rejected[account_id]
        for account_id in [a for a in self._locks if a not in candidates]:
            self._drop_lock(account_id)

    async def _probe(self, account_ids: Sequence[str]) -> dict[str, Fingerprint]:
        """Each account's stored ``config_version`` as Redis gave it, in one round trip
        (AccountStore.versions parses it, and a rejected -5, abc or WRONGTYPE all
        become one None there)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in account_ids:
                pipe.hget(self.keys.account(account_id), "config_version")
            replies = await call_each(pipe.execute(raise_on_error=False))
        return {a: _fingerprint(r) for a, r in zip(account_ids, replies, strict=True)}

    def _behind(self, account_id: str, seen: Fingerprint, mine: set[str]) -> bool:
        """Whether a known account's probe asks for a read."""
        if (
            account_id in self.rejected
            and self.rejected[account_id] == seen
            # a hash without a version may also be a removed one: gone from our set
            and (seen is not None or account_id in mine)
        ):
            return False  # what we rejected, unchanged: said once, not again each pass
        try:
            version = int(seen) if isinstance(seen, bytes | str) else None
        except ValueError:
            version = None
        if seen is None and account_id in mine and self.applied.get(account_id) == 0:
            return False  # still ours, a hash without a version, applied as version 0
        if version is None:  # removed, or not readable: reading it tells which
            return account_id in self.runner or account_id in self.rejected
        # != rather than >: a version that went back (Redis lost writes) is reloaded
        return version != self.applied.get(account_id, 0)

    def _apply_all(
        self,
        behind: list[str],
        raws: list[dict[Any, Any] | Exception],
        before: dict[str, int | None],
        entries: list[dict[str, Any]],
        done: Counter[str],
    ) -> None:
        """A reconcile's apply loop: no await in it, so no update handler can interleave;
        one that is mid-way (holding the account's lock) reads the hash itself and ACKs,
        and one that applied (or forgot) the account while our read was on its way read
        it after us: ``before`` tells, and ours is then too old to use."""
        for account_id, raw in zip(behind, raws, strict=True):
            lock = self._locks.get(account_id)
            if self.applied.get(account_id) != before[account_id]:
                done["handled meanwhile"] += 1
            elif lock is None or not lock.locked():
                result = self._apply(account_id, raw, quiet=True)
                done[result.did or "already applied"] += 1
                if result.mine:
                    entries.append(self._ack_entry(account_id, result))

    async def _ack_many(self, entries: Sequence[AckEntry | dict[str, Any]]) -> None:
        """ACK many accounts at once: a stream entry per thousand of them, fewer when
        their errors are long (an entry must stay under the message bound)."""
        chunks: list[list[AckEntry | dict[str, Any]]] = [[]]
        chars = 0
        for entry in entries:
            error = entry.error if isinstance(entry, AckEntry) else entry["error"]
            size = len(error or "")
            if len(chunks[-1]) >= MAX_ACKS_PER_MESSAGE or chars + size > MAX_ACK_ERROR_CHARS:
                chunks.append([])
                chars = 0
            chunks[-1].append(entry)
            chars += size
        await self._send_acks(
            [
                AccountConfigAcks.model_validate(
                    {"sender": self.id, "worker_id": self.id, "acks": chunk}
                )
                for chunk in chunks
                if chunk
            ]
        )

    async def _send_acks(self, acks: Sequence[AccountConfigUpdateAck | AccountConfigAcks]) -> None:
        """Write ACKs to our stream in one round trip; what Redis does not take now,
        the outbox writes once it does (never lost)."""
        if not acks:
            return
        if self.outbox.holds("acks"):  # earlier ACKs wait there: these go after them
            for ack in acks:
                self.send("acks", ack)
            return
        try:
            await append_many(self.redis, self.streams["acks"], acks, self.settings.stream_maxlen)
        except Exception as exc:
            # told once: until the outbox has written them, later ACKs queue behind
            log.warning("worker %s: %d ACK message(s) queued (%s)", self.id, len(acks), exc)
            for ack in acks:
                self.send("acks", ack)

    async def _reconcile_soon(self) -> None:
        """Another pass shortly, for accounts whose read access was missing."""
        await anyio.sleep(self.settings.backoff_max_s)
        await self._safe(self.reconcile())

    # outgoing events and crawl batches

    def send(self, kind: StreamKind, message: Message) -> None:
        """Queue a message for one of our streams without waiting (see Outbox)."""
        self.outbox.send(kind, message)

    def _on_task_state(self, task: MonitorTask, detail: str | None = None) -> None:
        event = TaskStatusEvent(
            sender=self.id,
            account_id=task.account_id,
            worker_id=self.id,
            state=task.state,
            config_version=task.config.config_version,
            error=clip(task.error) if task.error else None,
            detail=clip(detail) if detail else None,
        )
        if detail:
            self.send("events", event)
        else:
            self.outbox.state(event)

    def _on_recover(self, account_id: str, what: str) -> None:
        task = self.runner.get(account_id)
        if task is not None:
            self._on_task_state(task, what)

    def _on_expired(self, task: MonitorTask, reason: str) -> None:
        expired = LoginExpired(
            sender=self.id, account_id=task.account_id, worker_id=self.id, reason=clip(reason)
        )
        self.send("events", expired)

    def _on_items(self, task: MonitorTask, items: list[CrawledItem]) -> None:
        """Send a crawl's items in batches of at most INGEST_BATCH items and
        INGEST_BATCH_BYTES of JSON: a batch over the message bound would be refused by
        the Master whole (items reach 20,000 characters, 60 KB as UTF-8)."""
        batch: list[CrawledItem] = []
        size = 0
        for found in items:
            item = found
            item_size = len(item.model_dump_json().encode()) + 1  # and its comma
            if item_size > INGEST_BATCH_BYTES:  # only its extra fields make it this big
                log.warning(
                    "account %s: item %s carries %d bytes of extra fields; sent without them",
                    task.account_id,
                    item.item_id,
                    item_size,
                )
                item = item.model_copy(update={"extra": {}})
                item_size = len(item.model_dump_json().encode()) + 1
            if batch and (len(batch) >= INGEST_BATCH or size + item_size > INGEST_BATCH_BYTES):
                self._send_items(task, batch)
                batch, size = [], 0
            batch.append(item)
            size += item_size
        if batch:
            self._send_items(task, batch)

    def _send_items(self, task: MonitorTask, items: list[CrawledItem]) -> None:
        batch = CrawlBatch(
            sender=self.id, account_id=task.account_id, worker_id=self.id, items=tuple(items)
        )
        self.send("ingest", batch)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused for a block that allocates much and frees nothing:
    a reconcile of 10,000 accounts makes ~100,000 objects (configs, tasks, ACK entries)
    that all live on, so the collector's passes over them during the loop (a quarter to a
    third of its time, measured) find nothing. The block has no await; collection
    resumes after it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _field(raw: dict[Any, Any], name: str) -> str | None:
    value = raw.get(name.encode(), raw.get(name))
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _fingerprint(reply: Any) -> Fingerprint:
    """What a read of an account's version saw, to compare with the next read's."""
    if isinstance(reply, Exception):
        return (type(reply).__name__, str(reply))
    return reply if isinstance(reply, bytes | str) else None


def _stored_version(raw: dict[Any, Any]) -> Fingerprint:
    """The fingerprint of the version field of a hash read whole."""
    return _fingerprint(raw.get(b"config_version", raw.get("config_version")))


def _version_of(raw: dict[Any, Any]) -> int:
    """The version a hash claims, within what an ACK can carry (a poisoned value such as
    -1 or 2**64 must not make the rejecting ACK itself invalid)."""
    value = raw.get(b"config_version", raw.get("config_version", b"0"))
    try:
        return min(max(int(value), 0), MAX_VERSION)
    except (TypeError, ValueError):
        return 0
