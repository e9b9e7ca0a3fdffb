"""Pending config updates, tracked in Redis until each ends in exactly one outcome.

An update is recorded with a deadline before it is published. An ACK from the owning
worker whose applied version is at least the update's version resolves it (one ACK can
resolve several coalesced updates); a rejecting ACK resolves it as rejected. The sweeper
hands back updates whose deadline passed, for a retry with a longer deadline, and after
the last attempt records them as failed. Every transition is one Lua call that removes
the id from the pending set first, so two Masters sharing the tracker never resolve or
retry one update twice, and a Master restart loses nothing. Times come from Redis' clock.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from .connection import call, text
from .messages import AccountConfigUpdate, AccountConfigUpdateAck, dumps
from .settings import BusSettings
from .streams import last_entry_id

log = logging.getLogger(__name__)
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
# Only the account's owner may resolve its updates ('not_owner' otherwise); the worker
# id is the ACK stream's writer, never what the ACK claims.
_RESOLVE = (
    NOW_LUA
    + _CLOSE
    + """
local current = redis.call('HGET', KEYS[5], 'worker_id')
if current and current ~= ARGV[6] then return 'not_owner' end
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
        keys = [
            self.keys.pending,
            self.keys.account_pending(update.account_id),
            self.keys.update(update.update_id),
            self.keys.stats,
            self.keys.policy,
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
        """Track many updates in one round trip; with ``pipe``, only queue the records
        on it (the caller executes it, e.g. with the publishes right behind them)."""
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
        return closed or []

    async def resolve_many(
        self, acks: Sequence[AccountConfigUpdateAck]
    ) -> list[list[tuple[str, Status, float]] | None]:
        """:meth:`resolve` for many ACKs in one round trip, in order. None for an ACK
        whose worker does not own the account (it resolves nothing)."""
        calls = [self._resolve_call(ack) for ack in acks]
        if len(calls) == 1:  # one ACK (the usual case at low rates): no pipeline
            keys, args = calls[0]
            replies = [await call(self._resolve(keys=keys, args=args))]
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    await self._resolve(keys=keys, args=args, client=pipe)
                replies = await call(pipe.execute()) if calls else []
        return [
            None
            if isinstance(reply, bytes | str)
            else [(text(r[0]), text(r[1]), float(text(r[2]))) for r in reply]  # type: ignore[misc]
            for reply in replies
        ]

    def _resolve_call(self, ack: AccountConfigUpdateAck) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the resolve script for one ACK."""
        head, tail = self.keys.split(self.keys.update)
        version = ack.applied_version if ack.ok else max(ack.seen_version, ack.applied_version)
        keys = [
            self.keys.pending,
            self.keys.account_pending(ack.account_id),
            self.keys.outcomes,
            self.keys.stats,
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
        count and deadline already advanced) and the ones just recorded as failed."""
        uh, ut = self.keys.split(self.keys.update)
        ph, pt = self.keys.split(self.keys.account_pending)
        keys = [self.keys.pending, self.keys.outcomes, self.keys.stats]
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
        reply = await call(self._sweep(keys=keys, args=args))
        if not reply:
            return Sweep([], [])
        ids = [text(r[0]) for r in reply]
        loaded = await self.get_many(ids)
        retry: list[PendingUpdate] = []
        failed: list[PendingUpdate] = []
        for r, update in zip(reply, loaded, strict=True):
            if update is None:
                continue
            (retry if text(r[1]) == "retry" else failed).append(update)
        return Sweep(retry, failed)

    async def publish_policy(self) -> None:
        """Publish this process's delivery timing as the fleet's (the Master does)."""
        policy = {
            "ack_timeout_ms": int(self.settings.ack_timeout_s * 1000),
            "retry_backoff": self.settings.retry_backoff,
            "max_attempts": self.settings.max_attempts,
        }
        await call(self.redis.hset(self.keys.policy, mapping=policy))  # type: ignore[arg-type]

    async def cancel(self, update: PendingUpdate, error: str) -> bool:
        """Record a pending update as failed now (e.g. its account was removed).
        False if it had already ended."""
        keys = [
            self.keys.pending,
            self.keys.account_pending(update.account_id),
            self.keys.update(update.update_id),
            self.keys.outcomes,
            self.keys.stats,
        ]
        args: list[Any] = [update.update_id, error, self.settings.stream_maxlen, OUTCOME_TTL_S]
        return bool(await call(self._cancel(keys=keys, args=args)))

    async def get_many(self, update_ids: Sequence[str]) -> list[PendingUpdate | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for update_id in update_ids:
                pipe.hgetall(self.keys.update(update_id))
            raws = await call(pipe.execute())
        return [_pending_or_none(r) for r in raws]

    async def get(self, update_id: str) -> PendingUpdate | None:
        (update,) = await self.get_many([update_id])
        return update

    async def of_account(self, account_id: str) -> list[PendingUpdate]:
        ids: list[Any] = await call(self.redis.zrange(self.keys.account_pending(account_id), 0, -1))
        return [u for u in await self.get_many([text(i) for i in ids]) if u is not None]

    async def of_accounts(self, account_ids: Sequence[str]) -> dict[str, list[PendingUpdate]]:
        """:meth:`of_account` of many accounts: their indexes read by one script call
        per ``INDEXES_PER_CALL`` accounts, then the records in one pipelined round trip
        (not a round trip, nor a pipelined command, per account)."""
        ids: dict[str, list[str]] = {}
        for start in range(0, len(account_ids), INDEXES_PER_CALL):
            chunk = account_ids[start : start + INDEXES_PER_CALL]
            keys = [self.keys.account_pending(a) for a in chunk]
            found: list[Any] = await call(self._indexes(keys=keys))
            ids.update((a, [text(i) for i in index]) for a, index in zip(chunk, found, strict=True))
        loaded = iter(await self.get_many([u for found in ids.values() for u in found]))
        out: dict[str, list[PendingUpdate]] = {}
        for account_id, found_ids in ids.items():
            updates = [next(loaded) for _ in found_ids]
            out[account_id] = [u for u in updates if u is not None]
        return out

    async def retarget(self, update_id: str, worker_id: str) -> None:
        """The account moved: its ACK will now come from ``worker_id``."""
        await call(self.redis.hset(self.keys.update(update_id), "worker_id", worker_id))

    async def count(self) -> int:
        return int(await call(self.redis.zcard(self.keys.pending)))

    async def stats(self) -> dict[str, int]:
        raw = await call(self.redis.hgetall(self.keys.stats))
        return {text(k): int(v) for k, v in raw.items()}

    async def last_outcome_id(self) -> str:
        """The newest outcome entry's id: wait for outcomes after it."""
        return await last_entry_id(self.redis, self.keys.outcomes)

    async def watch_outcomes(self, after: str) -> AsyncGenerator[Outcome]:
        """Every outcome recorded after entry ``after``, as it is recorded, forever."""
        cursor = after
        while True:
            reply: Any = await call(
                self.redis.xread({self.keys.outcomes: cursor}, count=1000, block=1000)
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    cursor = text(entry_id)
                    outcome = Outcome.from_fields(fields)
                    if outcome is not None:
                        yield outcome

    async def wait_outcomes(
        self, update_ids: Sequence[str], after: str, timeout_s: float
    ) -> dict[str, Outcome]:
        """Outcomes of ``update_ids`` recorded after entry ``after``, waiting up to
        ``timeout_s``; the ones still unknown at the deadline are missing from the result."""
        wanted = set(update_ids)
        found: dict[str, Outcome] = {}
        if not wanted:
            return found
        with anyio.move_on_after(timeout_s):
            async with aclosing(self.watch_outcomes(after)) as outcomes:
                async for outcome in outcomes:
                    if outcome.update_id in wanted:
                        found[outcome.update_id] = outcome
                        if len(found) == len(wanted):
                            break
        return found

    async def recent_outcomes(self, count: int = 1000) -> list[Outcome]:
        """The newest ``count`` outcomes, newest first."""
        entries: Any = await call(self.redis.xrevrange(self.keys.outcomes, count=count))
        outcomes = (Outcome.from_fields(fields) for _id, fields in entries)
        return [o for o in outcomes if o is not None]

    async def wait_account_outcome(
        self, account_id: str, above_version: int, after: str, timeout_s: float
    ) -> Outcome | None:
        """The first outcome recorded after ``after`` for an update of ``account_id``
        newer than ``above_version``, or None at the deadline."""
        with anyio.move_on_after(timeout_s):
            async with aclosing(self.watch_outcomes(after)) as outcomes:
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
