"""Pending config updates, tracked in Redis until each ends in exactly one outcome.

An update is recorded with a deadline before it is published. An ACK from the owning
worker whose applied version is at least the update's version resolves it (one ACK can
resolve several coalesced updates); a rejecting ACK resolves it as rejected. The sweeper
hands back updates whose deadline passed, for a retry with a longer deadline, and after
the last attempt records them as failed. Every transition is one Lua call that removes
the id from the pending set first, so two Masters sharing the tracker never resolve or
retry one update twice, and a Master restart loses nothing. Times come from Redis' clock.

On a Redis Cluster each account bucket (see hiscrm_bus.keys) has its own pending set,
outcomes stream, counters and policy copy, so every script call stays in one slot; the
fleet-wide views (count, stats, sweep, the outcomes followed) are the union of the
buckets'.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import anyio
from anyio.abc import ObjectSendStream
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from .connection import call, is_cluster, text
from .limits import dumps
from .messages import AccountConfigUpdate, AccountConfigUpdateAck
from .resilience import side_by_side
from .scripts import ScriptCall, run_scripts
from .settings import BusSettings
from .streams import entry_parts, last_entry_id

log = logging.getLogger(__name__)
_CURSORS = ","  # between the buckets' entry ids in a cluster's outcome cursor
CLUSTER_POLL_S = 0.2  # how often outcomes_after looks at a cluster's buckets
Status = Literal["pending", "applied", "rejected", "failed"]
OUTCOME_TTL_S = 7 * 24 * 3600

NOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# Recording a pending update as a Lua function (it needs ``now``/``now_us`` of NOW_LUA),
# so a caller can compose it with the versioned write in one atomic call. The first
# deadline follows the Masters' policy when one is published (the Master tracks the
# update, whoever wrote it), else the writer's own setting.
RECORD_LUA = """
local function record(pending, acct_pending, update_key, stats, policy, id, account, worker,
                      version, reason, fields, timeout_ms, sender)
  local timeout = tonumber(redis.call('HGET', policy, 'ack_timeout_ms') or timeout_ms)
    or timeout_ms
  local deadline = now + tonumber(timeout)
  redis.call('HSET', update_key, 'update_id', id, 'account_id', account, 'worker_id', worker,
    'version', version, 'reason', reason, 'fields', fields, 'attempts', 1,
    'created_at_ms', now, 'created_at_us', now_us, 'deadline_ms', deadline,
    'status', 'pending', 'sender', sender)
  redis.call('ZADD', pending, deadline, id)
  redis.call('ZADD', acct_pending, tonumber(version), id)
  redis.call('HINCRBY', stats, 'sent', 1)
  return now
end
"""

# KEYS: pending, account pending index, update hash, stats, policy
# ARGV: update_id, account_id, worker_id, version, reason, fields, ack_timeout_ms, sender
_RECORD = (
    NOW_LUA
    + RECORD_LUA
    + """
return record(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
              ARGV[5], ARGV[6], ARGV[7], ARGV[8])
"""
)

# Shared by resolve and sweep: close one update with an outcome.
_CLOSE = """
local function close(id, key, status, err, now_us, outcomes, stats, maxlen, ttl)
  local now = math.floor(now_us / 1000)
  local created = tonumber(redis.call('HGET', key, 'created_at_us') or now_us)
  local latency = string.format('%.3f', (now_us - created) / 1000)
  local h = redis.call('HMGET', key, 'account_id', 'worker_id', 'version', 'attempts', 'reason')
  redis.call('HSET', key, 'status', status, 'outcome_at_ms', now, 'latency_ms', latency,
    'error', err)
  redis.call('EXPIRE', key, ttl)
  redis.call('XADD', outcomes, 'MAXLEN', '~', maxlen, '*', 'update_id', id,
    'account_id', h[1] or '', 'worker_id', h[2] or '', 'version', h[3] or '0',
    'status', status, 'attempts', h[4] or '1', 'latency_ms', latency, 'error', err,
    'reason', h[5] or '')
  redis.call('HINCRBY', stats, status, 1)
  return {id, status, latency}
end
"""

# KEYS: pending, account pending index, outcomes, stats, account hash
# ARGV: version, ok, error, update key head, update key tail, worker_id, maxlen, ttl
# Only the account's owner may resolve its updates ('not_owner' otherwise, also for an
# account with no owner or no hash: a missing owner is nobody's to speak for); the
# worker id is the ACK stream's writer, never what the ACK claims.
_RESOLVE = (
    NOW_LUA
    + _CLOSE
    + """
local current = redis.call('HGET', KEYS[5], 'worker_id')
if current ~= ARGV[6] then return 'not_owner' end
local out = {}
local status = 'rejected'
if ARGV[2] == '1' then status = 'applied' end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do
  local key = ARGV[4] .. id .. ARGV[5]
  local owner = redis.call('HGET', key, 'worker_id')
  if owner == false or owner == ARGV[6] then
    redis.call('ZREM', KEYS[2], id)
    if redis.call('ZREM', KEYS[1], id) == 1 then
      local c = close(id, key, status, ARGV[3], now_us, KEYS[3], KEYS[4], ARGV[7], ARGV[8])
      table.insert(out, c)
    end
  end
end
-- the account applied at its current version, by an update or by reconciling, is
-- no longer stale (HDEL never creates the hash)
if status == 'applied' then
  local v = tonumber(redis.call('HGET', KEYS[5], 'config_version') or '0')
  if #out > 0 or tonumber(ARGV[1]) >= v then redis.call('HDEL', KEYS[5], 'config_stale') end
end
return out
"""
)

# KEYS: pending, outcomes, stats
# ARGV: limit, max_attempts, ack_timeout_ms, backoff, update head, update tail,
#       account-pending head, account-pending tail, maxlen, ttl
_SWEEP = (
    NOW_LUA
    + _CLOSE
    + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])) do
  local key = ARGV[5] .. id .. ARGV[6]
  local h = redis.call('HMGET', key, 'attempts', 'account_id')
  if not h[1] then
    redis.call('ZREM', KEYS[1], id)
  else
    local attempts = tonumber(h[1])
    if attempts >= tonumber(ARGV[2]) then
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZREM', ARGV[7] .. h[2] .. ARGV[8], id)
      local err = 'no ACK after ' .. attempts .. ' attempts'
      close(id, key, 'failed', err, now_us, KEYS[2], KEYS[3], ARGV[9], ARGV[10])
      table.insert(out, {id, 'failed', attempts})
    else
      attempts = attempts + 1
      local deadline = now + math.floor(tonumber(ARGV[3]) * tonumber(ARGV[4]) ^ (attempts - 1))
      redis.call('HSET', key, 'attempts', attempts, 'deadline_ms', deadline)
      redis.call('ZADD', KEYS[1], deadline, id)
      redis.call('HINCRBY', KEYS[3], 'retried', 1)
      table.insert(out, {id, 'retry', attempts})
    end
  end
end
return out
"""
)

# KEYS: pending, account pending index, update hash, outcomes, stats
# ARGV: update_id, error, maxlen, ttl
_CANCEL = (
    NOW_LUA
    + _CLOSE
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
close(ARGV[1], KEYS[3], 'failed', ARGV[2], now_us, KEYS[4], KEYS[5], ARGV[3], ARGV[4])
return 1
"""
)


# KEYS: accounts' pending indexes. Returns each one's update ids, in version order.
_INDEXES = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('ZRANGE', key, 0, -1) end
return out
"""
# accounts whose indexes one script call reads (Redis runs nothing else meanwhile)
INDEXES_PER_CALL = 1000


@dataclass(frozen=True, slots=True)
class PendingUpdate:
    """One tracked update as stored in ``update:<id>``."""

    update_id: str
    account_id: str
    worker_id: str
    version: int
    reason: str
    fields: tuple[str, ...]
    attempts: int
    status: Status
    created_at_ms: int
    deadline_ms: int
    latency_ms: float | None = None
    error: str = ""

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> PendingUpdate:
        d = {text(k): text(v) for k, v in raw.items()}
        return cls(
            update_id=d["update_id"],
            account_id=d["account_id"],
            worker_id=d.get("worker_id", ""),
            version=int(d["version"]),
            reason=d.get("reason", ""),
            fields=tuple(json.loads(d.get("fields", "[]"))),
            attempts=int(d.get("attempts", "1")),
            status=d.get("status", "pending"),  # type: ignore[arg-type]
            created_at_ms=int(float(d.get("created_at_ms", "0"))),
            deadline_ms=int(float(d.get("deadline_ms", "0"))),
            latency_ms=float(d["latency_ms"]) if d.get("latency_ms") else None,
            error=d.get("error", ""),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one update ended, as read from the outcomes stream."""

    update_id: str
    account_id: str
    worker_id: str
    version: int
    status: Status
    attempts: int
    latency_ms: float
    error: str
    reason: str

    @classmethod
    def from_fields(cls, raw: dict[Any, Any]) -> Outcome | None:
        """The outcome an entry records, or None for an entry hiscrm did not write."""
        try:
            d = {text(k): text(v) for k, v in raw.items()}
            status = d["status"]
            if status not in ("applied", "rejected", "failed"):
                return None
            return cls(
                update_id=d["update_id"],
                account_id=d["account_id"],
                worker_id=d.get("worker_id", ""),
                version=int(d["version"]),
                status=status,  # type: ignore[arg-type]
                attempts=int(d.get("attempts", "1")),
                latency_ms=float(d.get("latency_ms", "0")),
                error=d.get("error", ""),
                reason=d.get("reason", ""),
            )
        except (KeyError, ValueError, AttributeError):
            return None


@dataclass(frozen=True, slots=True)
class Sweep:
    retry: list[PendingUpdate]
    failed: list[PendingUpdate]


class PendingTracker:
    def __init__(self, redis: Redis, settings: BusSettings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = settings.keys
        self._record = redis.register_script(_RECORD)
        self._resolve = redis.register_script(_RESOLVE)
        self._sweep = redis.register_script(_SWEEP)
        self._cancel = redis.register_script(_CANCEL)
        self._indexes = redis.register_script(_INDEXES)

    def record_call(
        self, update: AccountConfigUpdate, worker_id: str
    ) -> tuple[list[str], list[Any]]:
        """Keys and arguments of :data:`RECORD_LUA` for tracking ``update``."""
        bucket = self.keys.bucket(update.account_id)
        keys = [
            self.keys.pending(bucket),
            self.keys.account_pending(update.account_id),
            self.keys.update(update.update_id, bucket),
            self.keys.stats(bucket),
            self.keys.policy(bucket),
        ]
        args = [
            update.update_id,
            update.account_id,
            worker_id,
            update.config_version,
            update.reason,
            dumps(list(update.updated_fields)),
            int(self.settings.ack_timeout_s * 1000),
            update.sender,
        ]
        return keys, args

    async def record(self, update: AccountConfigUpdate, worker_id: str) -> None:
        """Track ``update`` (sent to ``worker_id``) until its outcome. Call before publishing."""
        keys, args = self.record_call(update, worker_id)
        await call(self._record(keys=keys, args=args))

    async def record_many(
        self, updates: Sequence[tuple[AccountConfigUpdate, str]], pipe: Pipeline | None = None
    ) -> None:
        """Track many updates in one round trip; with ``pipe`` (one Redis only), only
        queue the records on it (the caller executes it, e.g. with the publishes right
        behind them)."""
        if pipe is None and is_cluster(self.redis):
            calls: list[ScriptCall] = [
                (self._record, *self.record_call(update, worker_id))
                for update, worker_id in updates
            ]
            await run_scripts(self.redis, calls, durable=True)
            return
        if pipe is not None:
            for update, worker_id in updates:
                keys, args = self.record_call(update, worker_id)
                await self._record(keys=keys, args=args, client=pipe)
            return
        async with self.redis.pipeline(transaction=False) as own:
            await self.record_many(updates, own)
            await call(own.execute())

    async def resolve(self, ack: AccountConfigUpdateAck) -> list[tuple[str, Status, float]]:
        """Close every pending update of the ACK's account that it covers.

        Returns (update_id, status, latency_ms) for each update this call closed; an
        update another Master closed first is not returned here. An applied update also
        clears the account's ``config_stale`` mark.
        """
        (closed,) = await self.resolve_many([ack])
        if isinstance(closed, Exception):
            raise closed
        return closed or []

    async def resolve_many(
        self, acks: Sequence[AccountConfigUpdateAck]
    ) -> list[list[tuple[str, Status, float]] | Exception | None]:
        """:meth:`resolve` for many ACKs in one round trip, in order. None for an ACK
        whose worker does not own the account (it resolves nothing); the error reply of
        an ACK Redis refused (e.g. WRONGTYPE: a key of its account holds another type)
        is that ACK's alone. An outage is everyone's: BusUnavailable."""
        calls: list[ScriptCall] = [(self._resolve, *self._resolve_call(ack)) for ack in acks]
        replies = await run_scripts(self.redis, calls, each_error=True)
        return [
            reply
            if isinstance(reply, Exception)
            else None
            if isinstance(reply, bytes | str)
            else [(text(r[0]), text(r[1]), float(text(r[2]))) for r in reply]  # type: ignore[misc]
            for reply in replies
        ]

    def _resolve_call(self, ack: AccountConfigUpdateAck) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the resolve script for one ACK."""
        bucket = self.keys.bucket(ack.account_id)
        head, tail = self.keys.split(partial(self.keys.update, bucket=bucket))
        version = ack.applied_version if ack.ok else max(ack.seen_version, ack.applied_version)
        keys = [
            self.keys.pending(bucket),
            self.keys.account_pending(ack.account_id),
            self.keys.outcomes(bucket),
            self.keys.stats(bucket),
            self.keys.account(ack.account_id),
        ]
        args: list[Any] = [
            version,
            "1" if ack.ok else "0",
            ack.error or "",
            head,
            tail,
            ack.worker_id,
            self.settings.stream_maxlen,
            OUTCOME_TTL_S,
        ]
        return keys, args

    async def sweep(self, limit: int = 500) -> Sweep:
        """Take the updates whose deadline passed: the ones to retry now (their attempt
        count and deadline already advanced) and the ones just recorded as failed
        (at most ``limit`` per bucket)."""
        calls: list[ScriptCall] = []
        for bucket in self.keys.buckets:
            uh, ut = self.keys.split(partial(self.keys.update, bucket=bucket))
            ph, pt = self.keys.split(partial(self.keys.account_pending, bucket=bucket))
            keys = [self.keys.pending(bucket), self.keys.outcomes(bucket), self.keys.stats(bucket)]
            args: list[Any] = [
                limit,
                self.settings.max_attempts,
                int(self.settings.ack_timeout_s * 1000),
                self.settings.retry_backoff,
                uh,
                ut,
                ph,
                pt,
                self.settings.stream_maxlen,
                OUTCOME_TTL_S,
            ]
            calls.append((self._sweep, keys, args))
        replies = await run_scripts(self.redis, calls)
        swept = [
            (text(r[0]), text(r[1]), bucket)
            for bucket, reply in zip(self.keys.buckets, replies, strict=True)
            for r in reply or []
        ]
        if not swept:
            return Sweep([], [])
        loaded = await self._load([self.keys.update(u, b) for u, _what, b in swept])
        retry: list[PendingUpdate] = []
        failed: list[PendingUpdate] = []
        for (_id, what, _bucket), update in zip(swept, loaded, strict=True):
            if update is None:
                continue
            (retry if what == "retry" else failed).append(update)
        return Sweep(retry, failed)

    async def publish_policy(self) -> None:
        """Publish this process's delivery timing as the fleet's (the Master does)."""
        policy = {
            "ack_timeout_ms": int(self.settings.ack_timeout_s * 1000),
            "retry_backoff": self.settings.retry_backoff,
            "max_attempts": self.settings.max_attempts,
        }
        await self._each_bucket(lambda p, b: p.hset(self.keys.policy(b), mapping=policy))  # type: ignore[arg-type]

    async def cancel(self, update: PendingUpdate, error: str) -> bool:
        """Record a pending update as failed now (e.g. its account was removed).
        False if it had already ended."""
        bucket = self.keys.bucket(update.account_id)
        keys = [
            self.keys.pending(bucket),
            self.keys.account_pending(update.account_id),
            self.keys.update(update.update_id, bucket),
            self.keys.outcomes(bucket),
            self.keys.stats(bucket),
        ]
        args: list[Any] = [update.update_id, error, self.settings.stream_maxlen, OUTCOME_TTL_S]
        return bool(await call(self._cancel(keys=keys, args=args)))

    async def _load(self, update_keys: Sequence[str]) -> list[PendingUpdate | None]:
        """The update records at ``update_keys``, in one round trip."""
        if not update_keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in update_keys:
                pipe.hgetall(key)
            raws = await call(pipe.execute())
        return [_pending_or_none(r) for r in raws]

    async def get(self, update_id: str, account_id: str) -> PendingUpdate | None:
        """The record of update ``update_id`` of ``account_id``, None when there is none."""
        (update,) = await self._load([self.keys.update(update_id, self.keys.bucket(account_id))])
        return update

    async def of_account(self, account_id: str) -> list[PendingUpdate]:
        ids: list[Any] = await call(self.redis.zrange(self.keys.account_pending(account_id), 0, -1))
        bucket = self.keys.bucket(account_id)
        return [u for u in await self._load([self.keys.update(text(i), bucket) for i in ids]) if u]

    async def of_accounts(self, account_ids: Sequence[str]) -> dict[str, list[PendingUpdate]]:
        """:meth:`of_account` of many accounts: their indexes read by one script call
        per ``INDEXES_PER_CALL`` accounts, then the records in one pipelined round trip
        (not a round trip, nor a pipelined command, per account)."""
        ids: dict[str, list[str]] = {}
        calls: list[ScriptCall] = []
        chunks: list[list[str]] = []
        by_bucket: dict[int, list[str]] = {}
        for account_id in account_ids:  # one script call's keys must share a slot
            by_bucket.setdefault(self.keys.bucket(account_id), []).append(account_id)
        for in_bucket in by_bucket.values():
            for start in range(0, len(in_bucket), INDEXES_PER_CALL):
                chunk = in_bucket[start : start + INDEXES_PER_CALL]
                chunks.append(chunk)
                calls.append((self._indexes, [self.keys.account_pending(a) for a in chunk], []))
        for chunk, found in zip(chunks, await run_scripts(self.redis, calls), strict=True):
            ids.update((a, [text(i) for i in index]) for a, index in zip(chunk, found, strict=True))
        update_keys = [
            self.keys.update(u, self.keys.bucket(a)) for a in account_ids for u in ids.get(a, [])
        ]
        loaded = iter(await self._load(update_keys))
        out: dict[str, list[PendingUpdate]] = {}
        for account_id in account_ids:
            updates = [next(loaded) for _ in ids.get(account_id, [])]
            out[account_id] = [u for u in updates if u is not None]
        return out

    async def retarget(self, update: PendingUpdate, worker_id: str) -> None:
        """The account moved: the update's ACK will now come from ``worker_id``."""
        key = self.keys.update(update.update_id, self.keys.bucket(update.account_id))
        await call(self.redis.hset(key, "worker_id", worker_id))

    async def _each_bucket(self, command: Callable[[Pipeline, int], object]) -> list[Any]:
        """One command per bucket (one on a single Redis), in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in self.keys.buckets:
                command(pipe, bucket)
            return list(await call(pipe.execute()))

    async def count(self) -> int:
        """Updates pending now, fleet-wide."""
        counts = await self._each_bucket(lambda p, b: p.zcard(self.keys.pending(b)))
        return sum(int(c) for c in counts)

    async def stats(self) -> dict[str, int]:
        """The delivery counters, fleet-wide."""
        total: Counter[str] = Counter()
        for raw in await self._each_bucket(lambda p, b: p.hgetall(self.keys.stats(b))):
            total.update({text(k): int(v) for k, v in raw.items()})
        return dict(total)

    async def last_outcome_id(self) -> str:
        """Where the outcomes stand now: wait for outcomes after it. On one Redis the
        newest entry's id; on a cluster one id per bucket (an opaque cursor)."""
        if not self.keys.cluster:
            return await last_entry_id(self.redis, self.keys.outcomes())
        last = await self._each_bucket(lambda p, b: p.xrevrange(self.keys.outcomes(b), count=1))
        return _CURSORS.join(text(found[0][0]) if found else "0-0" for found in last)

    def _cursors(self, after: str) -> dict[str, str]:
        """Each outcomes stream's position in a :meth:`last_outcome_id` cursor."""
        streams = [self.keys.outcomes(b) for b in self.keys.buckets]
        ids = after.split(_CURSORS)
        if len(ids) != len(streams):  # e.g. "0-0" or "$" for every bucket
            ids = [after] * len(streams)
        return dict(zip(streams, ids, strict=True))

    @asynccontextmanager
    async def outcome_feed(
        self, after: str, accounts: Iterable[str] | None = None
    ) -> AsyncIterator[AsyncIterator[Outcome]]:
        """Every outcome recorded after cursor ``after`` (of ``accounts`` at least, when
        given; on a cluster only their buckets are followed), as it is recorded, for as
        long as the context lasts. On a cluster one blocking read per bucket (each in its
        own slot) feeds them, side by side."""
        cursors = self._cursors(after)
        if accounts is not None and len(cursors) > 1:
            wanted = {self.keys.outcomes(self.keys.bucket(a)) for a in accounts}
            cursors = {stream: at for stream, at in cursors.items() if stream in wanted}
        if len(cursors) == 1:
            async with aclosing(self._feed(cursors)) as feed:
                yield feed
            return
        send, receive = anyio.create_memory_object_stream[Outcome](1000)
        # one bucket's read that fails (an outage) ends the wait with its error, as on
        # one Redis
        async with side_by_side() as tg, receive:
            for stream, cursor in cursors.items():
                tg.start_soon(self._follow, {stream: cursor}, send.clone())
            send.close()
            try:
                yield receive
            finally:
                tg.cancel_scope.cancel()

    async def _feed(self, cursors: dict[str, str]) -> AsyncGenerator[Outcome]:
        while True:
            async for outcome in self._read_outcomes(cursors, block_ms=1000):
                yield outcome

    async def _follow(self, cursors: dict[str, str], send: ObjectSendStream[Outcome]) -> None:
        async with send, aclosing(self._feed(cursors)) as feed:
            async for outcome in feed:
                await send.send(outcome)

    async def _read_outcomes(
        self, cursors: dict[str, str], block_ms: int | None
    ) -> AsyncGenerator[Outcome]:
        """One read of ``cursors``' streams (blocking up to ``block_ms`` on one Redis or
        when they share a slot; None: not at all); advances the cursors."""
        streams: dict[Any, Any] = dict(cursors)
        if len(cursors) == 1:
            replies: Any = [await call(self.redis.xread(streams, count=1000, block=block_ms))]
        else:  # streams in different slots: one XREAD each, in one round trip per node
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream, cursor in cursors.items():
                    pipe.xread({stream: cursor}, count=1000)
                replies = await call(pipe.execute())
        for reply in replies:
            for stream, entries in reply or []:
                for entry_id, fields in entries:
                    cursors[text(stream)] = text(entry_id)
                    outcome = Outcome.from_fields(fields)
                    if outcome is not None:
                        yield outcome

    async def outcomes_after(self, after: str, timeout_s: float) -> tuple[list[Outcome], str]:
        """The outcomes recorded after cursor ``after``, waiting up to ``timeout_s`` for
        the first one; and the cursor after them. (On a cluster it looks at every bucket
        every ``CLUSTER_POLL_S`` rather than holding a blocking read per bucket: it is
        for pages that refresh on news, not for waiting on an update.)"""
        cursors = self._cursors(after)
        found: list[Outcome] = []
        if len(cursors) == 1:
            block_ms = max(1, int(timeout_s * 1000))
            found = [o async for o in self._read_outcomes(cursors, block_ms)]
        else:
            with anyio.move_on_after(timeout_s):
                while not found:
                    found = [o async for o in self._read_outcomes(cursors, None)]
                    if not found:
                        await anyio.sleep(CLUSTER_POLL_S)
        return found, _CURSORS.join(cursors.values())

    async def wait_outcomes(
        self,
        update_ids: Sequence[str],
        after: str,
        timeout_s: float,
        *,
        accounts: Iterable[str] | None = None,
    ) -> dict[str, Outcome]:
        """Outcomes of ``update_ids`` recorded after cursor ``after``, waiting up to
        ``timeout_s``; the ones still unknown at the deadline are missing from the result.
        ``accounts``: the updates' accounts, when known (on a cluster, only their buckets
        are then followed: one blocking read for one account, not one per bucket)."""
        wanted = set(update_ids)
        found: dict[str, Outcome] = {}
        if not wanted:
            return found
        with anyio.move_on_after(timeout_s):
            async with self.outcome_feed(after, accounts) as outcomes:
                async for outcome in outcomes:
                    if outcome.update_id in wanted:
                        found[outcome.update_id] = outcome
                        if len(found) == len(wanted):
                            break
        return found

    async def recent_outcomes(self, count: int = 1000) -> list[Outcome]:
        """The newest ``count`` outcomes, newest first."""
        found = await self._each_bucket(
            lambda p, b: p.xrevrange(self.keys.outcomes(b), count=count)
        )
        entries = [entry for in_bucket in found for entry in in_bucket]
        if len(found) > 1:  # newest first across the buckets, by entry time
            entries.sort(key=lambda e: entry_parts(text(e[0])), reverse=True)
        outcomes = (Outcome.from_fields(fields) for _id, fields in entries[:count])
        return [o for o in outcomes if o is not None]

    async def wait_account_outcome(
        self, account_id: str, above_version: int, after: str, timeout_s: float
    ) -> Outcome | None:
        """The first outcome recorded after ``after`` for an update of ``account_id``
        newer than ``above_version``, or None at the deadline."""
        with anyio.move_on_after(timeout_s):
            async with self.outcome_feed(after, [account_id]) as outcomes:
                async for outcome in outcomes:
                    if outcome.account_id == account_id and outcome.version > above_version:
                        return outcome
        return None


def _pending_or_none(raw: dict[Any, Any]) -> PendingUpdate | None:
    """The update a record holds; None when there is none or it is not ours to read."""
    if not raw:
        return None
    try:
        return PendingUpdate.from_hash(raw)
    except (KeyError, ValueError, TypeError, RecursionError):
        log.warning("an update record does not decode; ignored")
        return None
