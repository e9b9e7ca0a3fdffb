"""Sending config updates: the versioned write's notice to the owning worker, tracked
until its outcome. Used by the Master's loops and by the operator CLI alike."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from hiscrm_bus.accounts import (
    WRITE_ACCOUNT_LUA,
    AccountConfig,
    AccountStore,
    AccountUpdate,
    ImportPlan,
    check_changes,
    decode_hash,
    final_version,
    to_hash,
    write_failure,
)
from hiscrm_bus.acl import Grants
from hiscrm_bus.connection import call, is_cluster
from hiscrm_bus.errors import AccountNotFound, InvalidAccountConfig, VersionConflict
from hiscrm_bus.limits import MAX_VERSION
from hiscrm_bus.messages import AccountConfigUpdate, UpdateReason, encode, new_id
from hiscrm_bus.pending import NOW_LUA, RECORD_LUA, Outcome, PendingTracker
from hiscrm_bus.scripts import ScriptCall, publish_each, run_scripts
from hiscrm_bus.settings import BusSettings

log = logging.getLogger(__name__)
BATCH = 500
RACE_RETRIES = 5  # reads a change may take when others keep writing the same account

# KEYS: account hash, unassigned set, then the pending record's (pending, account pending
# index, update hash, stats, policy). ARGV: the versioned write's eight, the record's
# eight, the owner's control channel, the update as published. Returns {version or
# write_failure code, subscribers that got it}. One atomic call: the update is written,
# tracked and published together, or not at all. On a cluster the channel is '' (a
# script may not publish to a channel in another slot): the caller publishes after.
_CHANGE = (
    NOW_LUA
    + WRITE_ACCOUNT_LUA
    + RECORD_LUA
    + """
local v = write_account(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
                        ARGV[7], ARGV[8])
if v < 0 then return {v, 0} end
record(KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], ARGV[9], ARGV[10], ARGV[11], ARGV[12],
       ARGV[13], ARGV[14], ARGV[15], ARGV[16])
if ARGV[17] == '' then return {v, 0} end
return {v, redis.call('PUBLISH', ARGV[17], ARGV[18])}
"""
)


@dataclass(frozen=True, slots=True)
class Removal:
    """What removing an account did."""

    version: int  # the last version it had
    worker_id: str | None  # the owner it had (told to stop the task)
    cancelled: int  # pending updates closed as failed
    data_kept: bool


@dataclass(frozen=True, slots=True)
class Imported:
    """What writing an import plan did."""

    added: list[AccountConfig]
    updated: list[AccountUpdate]
    unchanged: int
    # rows not written: an id created (AccountExists) or removed (AccountNotFound) by
    # someone else between the check and the write
    raced: list[Exception]
    # the updates sent to owning workers, tracked until their outcome
    sent: list[AccountConfigUpdate]

    def owners(self) -> dict[str, str | None]:
        """Each written account's worker."""
        owners = {c.id: c.worker_id for c in self.added}
        return owners | {u.account_id: u.worker_id for u in self.updated}


# the columns of a tally, in order: an update without an outcome (yet) is "timed out"
TALLY_STATUSES: tuple[str, ...] = ("applied", "rejected", "failed", "timed out")


@dataclass(frozen=True, slots=True)
class Tally:
    """How many updates sent to many accounts ended how, per owning worker, as
    ``hiscrm account set --all --wait`` and the console's fleet-wide change report it."""

    by_worker: dict[str, Counter[str]] = field(default_factory=dict)
    tracked: int = 0  # updates sent to an owner (waited for)
    outcomes: int = 0  # of them, the ones that ended
    last_ack_ms: float = 0.0  # the longest latency among the outcomes

    @property
    def complete(self) -> bool:
        return self.outcomes == self.tracked

    @property
    def all_applied(self) -> bool:
        return all(c["applied"] == c.total() for c in self.by_worker.values())

    def rows(self) -> list[tuple[str, list[int]]]:
        """(worker, counts in :data:`TALLY_STATUSES` order), by worker id."""
        return [
            (worker, [counts[k] for k in TALLY_STATUSES])
            for worker, counts in sorted(self.by_worker.items())
        ]


def tally(
    tracked: Mapping[str, AccountConfigUpdate],
    outcomes: Mapping[str, Outcome],
    owners: Mapping[str, str | None],
) -> Tally:
    """Tally the outcomes (by update id) of the ``tracked`` updates (by update id) per
    owning worker (``owners``: account id to worker; ``-`` for none)."""
    by_worker: dict[str, Counter[str]] = {}
    for update_id, message in tracked.items():
        worker = owners.get(message.account_id) or "-"
        outcome = outcomes.get(update_id)
        by_worker.setdefault(worker, Counter())[outcome.status if outcome else "timed out"] += 1
    found = [o for u, o in outcomes.items() if u in tracked]
    return Tally(
        by_worker=by_worker,
        tracked=len(tracked),
        outcomes=len(found),
        last_ack_ms=max((o.latency_ms for o in found), default=0.0),
    )


def check_batch(batch: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
    """Refuse a change to many accounts if it is invalid for any of them: raises
    InvalidAccountConfig naming the first such account. Writes nothing."""
    for account_id, (current, changes) in batch.items():
        try:
            check_changes(current, changes)
        except InvalidAccountConfig as exc:
            raise InvalidAccountConfig(f"{account_id}: {exc}") from None


def created(config: AccountConfig) -> AccountUpdate:
    """A new account as a write its owner is told about: every field, no previous owner."""
    fields = tuple(sorted(to_hash(config)))
    return AccountUpdate(config.id, config.config_version, fields, config.worker_id, None)


class Updates:
    def __init__(self, redis: Redis, settings: BusSettings, sender: str) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = settings.keys
        self.sender = sender
        self.store = AccountStore(redis, self.keys)
        self.tracker = PendingTracker(redis, settings)
        self.grants = Grants(redis, self.keys)
        self._change = redis.register_script(_CHANGE)
        self._cluster = is_cluster(redis)

    def message(
        self, update: AccountUpdate, reason: UpdateReason, attempt: int = 1
    ) -> AccountConfigUpdate:
        return AccountConfigUpdate(
            sender=self.sender,
            update_id=new_id(),
            account_id=update.account_id,
            config_version=update.version,
            reason=reason,
            updated_fields=update.fields,
            attempt=attempt,
        )

    async def change(
        self,
        account_id: str,
        changes: Mapping[str, Any],
        reason: UpdateReason,
        *,
        expect_version: int | None = None,
        expect_owner: str | None = None,
    ) -> tuple[AccountUpdate, AccountConfigUpdate | None]:
        """Write ``changes`` (validated, versioned, atomic) and notify the owner.
        Returns the write and the update sent (None when no worker owns the account).

        The common case — the owner stays — costs one read and one atomic call that
        checks the version is unchanged, writes, bumps it, records the pending update
        and publishes it; a lost race reads again. A change of owner first moves the
        workers' read access, so it takes the longer path of separate steps."""
        for _attempt in range(RACE_RETRIES):
            raw = await call(self.redis.hgetall(self.keys.account(account_id)))
            if not raw:
                raise AccountNotFound(f"no account {account_id!r}")
            current = decode_hash(raw)
            version = _version(current)
            if expect_version is not None and expect_version != version:
                raise VersionConflict(f"account {account_id} changed meanwhile")
            if version >= MAX_VERSION:  # what Redis' HINCRBY could not bump either
                raise final_version(account_id)
            write = self.store.write_call(account_id, current, changes, version, expect_owner)
            owner = write.new.worker_id
            if owner is None or owner != current.get("worker_id"):
                break  # unowned (nobody to tell), or a move (read access goes first)
            result = AccountUpdate(account_id, version + 1, write.fields, owner, owner)
            message = self.message(result, reason)
            keys, args = self._change_call(write.keys, write.args, message, owner)
            # on a cluster: back once a replica has the write (a failover keeps it)
            (reply,) = await run_scripts(self.redis, [(self._change, keys, args)], durable=True)
            code, receivers = int(reply[0]), int(reply[1])
            if code == -2 and expect_version is None:
                continue  # someone wrote in between: read again
            if code < 0:
                raise write_failure(code, account_id, expect_owner)
            if self._cluster:  # written and recorded: now tell the owner
                (receivers,) = await self._publish([(message, owner)])
            self._log_sent([(message, owner)], [receivers])
            return result, message
        result = await self.store.update(
            account_id, changes, expect_version=expect_version, expect_owner=expect_owner
        )
        (sent,) = await self.notify([result], reason)
        return result, sent

    async def change_many(
        self,
        batch: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
        reason: UpdateReason,
    ) -> tuple[list[AccountUpdate | Exception], list[AccountConfigUpdate | None]]:
        """Fleet-wide change, in batches of ``BATCH``, never one round trip per account.
        Returns each account's write (or why not, in ``batch``'s order) and the updates
        sent. An account whose owner stays costs one atomic call, as in :meth:`change`,
        pipelined with the rest of its batch; a change of owner, or an account someone
        wrote since ``batch`` was read, takes the longer way (versioned write; grants,
        records and publishes), in one more round trip for all of them."""
        items = list(batch.items())
        results: list[AccountUpdate | Exception] = []
        sent: list[AccountConfigUpdate | None] = []
        for start in range(0, len(items), BATCH):
            chunk = dict(items[start : start + BATCH])
            done, messages, rest = await self._change_in_place(chunk, reason)
            sent += messages
            if rest:
                written = await self.store.update_many(rest)
                done.update(zip(rest, written, strict=True))
                sent += await self.notify(
                    [r for r in written if isinstance(r, AccountUpdate)], reason
                )
            results += [done[account_id] for account_id in chunk]
        return results, sent

    async def _change_in_place(
        self,
        chunk: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
        reason: UpdateReason,
    ) -> tuple[
        dict[str, AccountUpdate | Exception],
        list[AccountConfigUpdate],
        dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
    ]:
        """The one-call path of :meth:`change` for many accounts in one pipeline: what it
        did per account, the updates sent, and the accounts left for the longer way."""
        done: dict[str, AccountUpdate | Exception] = {}
        rest: dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
        calls: list[tuple[AccountUpdate, AccountConfigUpdate, str]] = []
        scripts: list[ScriptCall] = []
        for account_id, (current, changes) in chunk.items():
            version = _version(current)
            if version >= MAX_VERSION:  # what Redis' HINCRBY could not bump either
                done[account_id] = final_version(account_id)
                continue
            try:
                write = self.store.write_call(account_id, current, changes, version)
            except InvalidAccountConfig as exc:
                done[account_id] = exc
                continue
            owner = write.new.worker_id
            if owner is None or owner != current.get("worker_id"):
                rest[account_id] = (current, changes)
                continue
            result = AccountUpdate(account_id, version + 1, write.fields, owner, owner)
            message = self.message(result, reason)
            scripts.append(
                (self._change, *self._change_call(write.keys, write.args, message, owner))
            )
            calls.append((result, message, owner))
        # one account's error reply is its own result; an outage is everyone's
        replies = await run_scripts(self.redis, scripts, each_error=True, durable=True)
        sent: list[tuple[AccountConfigUpdate, str]] = []
        receivers: list[int] = []
        for (result, message, owner), reply in zip(calls, replies, strict=True):
            if isinstance(reply, Exception):
                done[result.account_id] = reply
                continue
            code = int(reply[0])
            if code == -2:
                rest[result.account_id] = chunk[result.account_id]  # written meanwhile
            elif code < 0:
                done[result.account_id] = write_failure(code, result.account_id, None)
            else:
                done[result.account_id] = result
                sent.append((message, owner))
                receivers.append(int(reply[1]))
        if self._cluster:  # written and recorded: now tell the owners
            receivers = await self._publish(sent)
        self._log_sent(sent, receivers)
        return done, [m for m, _w in sent], rest

    async def selection(
        self,
        changes: Mapping[str, Any],
        *,
        account_id: str | None = None,
        worker: str | None = None,
        platform: str | None = None,
    ) -> dict[str, tuple[dict[str, Any], Mapping[str, Any]]]:
        """The accounts a change is for — one account, a worker's, a platform's, or
        every one (none of the three given) — each with its decoded hash and the
        changes: what :meth:`change_many` takes (check it with :func:`check_batch`).
        AccountNotFound for a named account that does not exist; InvalidAccountConfig
        for one whose key holds no hash. Reads in one pipelined round trip (plus the
        ids)."""
        if account_id is not None:
            ids = [account_id]
        elif worker is not None:
            ids = await self.store.ids_of_worker(worker)
        else:
            ids = await self.store.ids()
        raws = await self.store.get_each(ids)
        batch: dict[str, tuple[dict[str, Any], Mapping[str, Any]]] = {}
        for aid, raw in zip(ids, raws, strict=True):
            if isinstance(raw, Exception):  # its key holds no hash: nothing to change in it
                raise InvalidAccountConfig(
                    f"{aid}: the stored account cannot be read ({raw}); remove the account"
                )
            if not raw:
                if account_id is not None:
                    raise AccountNotFound(f"no account {aid!r}")
                continue
            current = decode_hash(raw)
            if platform is None or current.get("platform") == platform:
                batch[aid] = (current, changes)
        return batch

    async def create(
        self, config: AccountConfig
    ) -> tuple[AccountConfig, AccountConfigUpdate | None]:
        """Add an account (AccountExists if the id is taken) and tell its worker, if it
        has one, as any update: tracked until the worker applies it."""
        stored = await self.store.create(config)
        (sent,) = await self.notify([created(stored)], "assignment")
        return stored, sent

    async def import_accounts(self, plan: ImportPlan) -> Imported:
        """Write an import plan that :meth:`AccountStore.plan_import` found without a
        problem: create the new accounts and tell their owners (as ``account add``
        does), then change the others' changed fields by the versioned update (as
        ``account set`` does); pipelined in batches of ``BATCH``. An id created or
        removed by someone else since the check is reported in ``raced``, not written."""
        if plan.problems:
            raise InvalidAccountConfig(f"{len(plan.problems)} bad row(s): nothing written")
        added: list[AccountConfig] = []
        raced: list[Exception] = []
        sent: list[AccountConfigUpdate | None] = []
        for start in range(0, len(plan.create), BATCH):
            made = await self.store.create_many(plan.create[start : start + BATCH])
            new = [c for c in made if isinstance(c, AccountConfig)]
            raced += [c for c in made if isinstance(c, Exception)]
            added += new
            sent += await self.notify([created(c) for c in new], "assignment")
        results, messages = await self.change_many(plan.change, "admin_update")
        raced += [r for r in results if isinstance(r, Exception)]
        done = Imported(
            added=added,
            updated=[r for r in results if isinstance(r, AccountUpdate)],
            unchanged=len(plan.unchanged),
            raced=raced,
            sent=[m for m in [*sent, *messages] if m is not None],
        )
        log.info(
            "import: %d account(s) added, %d updated, %d unchanged, %d raced",
            len(done.added),
            len(done.updated),
            done.unchanged,
            len(done.raced),
        )
        return done

    async def notify(
        self, results: Sequence[AccountUpdate], reason: UpdateReason
    ) -> list[AccountConfigUpdate | None]:
        """Record each update as pending and publish it to its owner, in one pipelined
        round trip. The records are queued first, and one connection runs commands in
        order, so even an instant ACK finds its pending entry."""
        messages: list[AccountConfigUpdate | None] = []
        owned: list[tuple[AccountConfigUpdate, str]] = []
        for result in results:
            if result.worker_id is None:
                log.info(
                    "account %s: version %d written; no worker owns it yet",
                    result.account_id,
                    result.version,
                )
                messages.append(None)
                continue
            message = self.message(result, reason)
            messages.append(message)
            owned.append((message, result.worker_id))
        # a worker that just lost the account stops its task on this notice; it is
        # not tracked (the new owner's ACK is what counts, and a dead worker never answers)
        notices = [
            (self.message(r, "unassignment"), r.previous_worker_id)
            for r in results
            if r.previous_worker_id is not None and r.previous_worker_id != r.worker_id
        ]
        sends = [*owned, *notices]
        # read access follows the account before anyone is told to read it
        moved = [r for r in results if r.previous_worker_id != r.worker_id]
        if moved:
            await self.grants.sync(w for r in moved for w in (r.worker_id, r.previous_worker_id))
        if sends and self._cluster:  # records first, then the publishes
            await self.tracker.record_many(owned)
            self._log_sent(sends, await self._publish(sends))
        elif sends:
            async with self.redis.pipeline(transaction=False) as pipe:
                await self.tracker.record_many(owned, pipe)
                for message, worker_id in sends:
                    pipe.publish(self.keys.control(worker_id), encode(message))
                replies = await call(pipe.execute())
            self._log_sent(sends, replies[len(owned) :])
        return messages

    async def remove(self, account_id: str, *, keep_data: bool = False) -> Removal:
        """Delete the account, revoke its worker's read access, and tell the worker (it
        stops the task); close its pending updates as failed; and, unless ``keep_data``,
        have a Master delete its crawled data from the database (what Redis received up
        to now: an account added again with this id starts empty). Raises
        AccountNotFound (after queueing the deletion of data left behind by an earlier
        removal, unless ``keep_data``)."""
        pending = await self.tracker.of_account(account_id)
        try:
            version, worker = await self.store.remove(account_id)
        except AccountNotFound:
            if not keep_data:
                await self.forget_data(account_id)
            raise
        # after the config is gone: no batch received after this is accepted (the
        # owner check), and the ones received before are deleted or refused
        if not keep_data:
            await self.forget_data(account_id)
        cancelled = [await self.tracker.cancel(u, "account removed") for u in pending]
        if worker:
            await self.grants.sync([worker])
            notice = AccountConfigUpdate(
                sender=self.sender,
                update_id=new_id(),
                account_id=account_id,
                config_version=version + 1,
                reason="removed",
            )
            await self.publish_many([(notice, worker)])
        log.info(
            "account %s removed (version %d, worker %s)%s",
            account_id,
            version,
            worker or "-",
            "; crawled data kept" if keep_data else "; its crawled data is deleted by a Master",
        )
        return Removal(version, worker, sum(cancelled), data_kept=keep_data)

    async def forget_data(self, account_id: str) -> None:
        """Queue the deletion of the account's crawled data, up to now on Redis' clock
        (a Master's archive pass does it; see hiscrm_master.archive)."""
        seconds, micros = await call(self.redis.time())
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        await call(self.redis.zadd(self.keys.removals, {account_id: now_ms}))

    async def publish_many(self, messages: Sequence[tuple[AccountConfigUpdate, str]]) -> None:
        self._log_sent(messages, await self._publish(messages))

    async def _publish(self, messages: Sequence[tuple[AccountConfigUpdate, str]]) -> list[int]:
        """Publish each update to its worker; how many subscribers got each."""
        return await publish_each(
            self.redis, [(self.keys.control(w), encode(m)) for m, w in messages]
        )

    def _change_call(
        self,
        write_keys: Sequence[str],
        write_args: Sequence[Any],
        message: AccountConfigUpdate,
        owner: str,
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of :data:`_CHANGE` for a write and its update."""
        record_keys, record_args = self.tracker.record_call(message, owner)
        channel = "" if self._cluster else self.keys.control(owner)
        return [*write_keys, *record_keys], [*write_args, *record_args, channel, encode(message)]

    def _log_sent(
        self, messages: Sequence[tuple[AccountConfigUpdate, str]], receivers: Sequence[int]
    ) -> None:
        for (message, worker_id), count in zip(messages, receivers, strict=True):
            log.info(
                "config update sent to worker %s: account %s version %d (%s) update %s%s",
                worker_id,
                message.account_id,
                message.config_version,
                message.reason,
                message.update_id,
                "" if count else " [no subscriber: it will reconcile or be retried]",
            )


def _version(current: Mapping[str, Any]) -> int:
    try:
        return int(current.get("config_version") or 0)
    except (TypeError, ValueError):
        return 0
