"""Crawled comments and DMs: de-duplicated by the platform's item id, stored per account,
capped so Redis memory stays bounded, and forgotten with the account.

Forgetting leaves a ``removed_at`` mark (with a TTL) in the crawl stats hash: a batch the
Master accepted while the account still had its owner, but stores only after the data
was deleted, finds the mark and no account, and is refused in the same Lua call that
would have written it. So a removed account's data cannot come back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError
from redis.asyncio import Redis

from hiscrm_bus.connection import call, call_each, text
from hiscrm_bus.keys import Keys
from hiscrm_bus.messages import CrawlBatch, CrawledItem, utcnow
from hiscrm_bus.workers import TaskReport, WorkerRegistry

log = logging.getLogger(__name__)
Kind = Literal["comment", "dm"]
KINDS: dict[str, Kind] = {"comments": "comment", "dms": "dm"}

DEFAULT_CAP = 1000
REMOVED_TTL_S = 3600  # far longer than a Master holds a batch between its checks and the write

# KEYS: item zset, bodies hash, crawl stats hash, account hash
# ARGV: cap, crawled_at, stats field, then (id, score, body) triples
_STORE = """
if redis.call('HEXISTS', KEYS[3], 'removed_at') == 1 then
  if redis.call('EXISTS', KEYS[4]) == 0 then return -1 end
  -- added again since: this batch is the new account's
  redis.call('HDEL', KEYS[3], 'removed_at')
  redis.call('PERSIST', KEYS[3])
end
local cap = tonumber(ARGV[1])
local added = 0
for i = 4, #ARGV, 3 do
  local id, score = ARGV[i], tonumber(ARGV[i + 1])
  if redis.call('ZSCORE', KEYS[1], id) == false then
    local n = redis.call('ZCARD', KEYS[1])
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    -- when full, an item older than all kept ones was dropped before: don't re-add it
    if n < cap or score > tonumber(oldest[2]) then
      redis.call('ZADD', KEYS[1], score, id)
      redis.call('HSET', KEYS[2], id, ARGV[i + 2])
      added = added + 1
      if n + 1 > cap then
        local gone = redis.call('ZRANGE', KEYS[1], 0, 0)
        redis.call('ZREMRANGEBYRANK', KEYS[1], 0, 0)
        redis.call('HDEL', KEYS[2], gone[1])
      end
    end
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[3], ARGV[3], added) end
redis.call('HSET', KEYS[3], 'last_crawl_at', ARGV[2])
return added
"""


@dataclass(frozen=True, slots=True)
class CrawlStats:
    """What the Master recorded as batches arrived: how many new items of each kind it
    ever stored (the cap evicts the oldest, so more than are kept now), and when the last
    batch arrived (a crawl that finds nothing sends none: the worker's report says more)."""

    comments: int
    dms: int
    last_crawl_at: datetime | None


@dataclass(frozen=True, slots=True)
class AccountData:
    """Everything ``hiscrm data`` shows of one account."""

    account_id: str
    exists: bool  # its config hash exists (crawled data may outlive it: --keep-data)
    items: list[CrawledItem]  # the newest of the kind asked for, newest first
    stored: dict[str, int]  # items kept now, by plural kind
    received: CrawlStats
    worker_id: str | None  # the owner the config names
    worker_alive: bool
    task: TaskReport | None  # the owner's last heartbeat report of the account's task

    @property
    def known(self) -> bool:
        """The account exists, or crawled data of it is kept."""
        return self.exists or any(self.stored.values()) or self.received.last_crawl_at is not None


class IngestStore:
    def __init__(self, redis: Redis, keys: Keys, cap: int = DEFAULT_CAP) -> None:
        self.redis = redis
        self.keys = keys
        self.cap = cap
        self._store = redis.register_script(_STORE)

    async def store(self, batch: CrawlBatch) -> dict[Kind, int]:
        """Store the batch's new items; returns how many of each kind were new (nothing
        when the account was removed since the batch was accepted)."""
        added: dict[Kind, int] = {}
        for plural, kind in KINDS.items():
            items = [i for i in batch.items if i.kind == kind]
            if not items and kind == "dm":
                continue
            args: list[Any] = [self.cap, batch.crawled_at.isoformat(), plural]
            for item in items:
                args += [item.item_id, item.created_at.timestamp(), item.model_dump_json()]
            keys = [
                self.keys.items(batch.account_id, plural),
                self.keys.item_bodies(batch.account_id, plural),
                self.keys.crawl_stats(batch.account_id),
                self.keys.account(batch.account_id),
            ]
            count = int(await call(self._store(keys=keys, args=args)))
            if count < 0:
                log.info(
                    "account %s: crawl batch from worker %s dropped: the account was removed",
                    batch.account_id,
                    batch.worker_id,
                )
                return {}
            added[kind] = count
        return added

    async def forget(self, account_id: str) -> int:
        """Delete every crawled item, item body and crawl stat of the account, and mark
        it removed so that a batch already on its way is refused (see the module
        docstring). Returns how many keys were deleted."""
        data = [self.keys.items(account_id, p) for p in KINDS]
        data += [self.keys.item_bodies(account_id, p) for p in KINDS]
        stats = self.keys.crawl_stats(account_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*data, stats)
            pipe.hset(stats, "removed_at", utcnow().isoformat())
            pipe.expire(stats, REMOVED_TTL_S)
            deleted, *_ = await call(pipe.execute())
        return int(deleted)

    async def holds(self, account_id: str) -> bool:
        """Whether any crawled data of the account is stored (a removal mark is none)."""
        data = [self.keys.items(account_id, p) for p in KINDS]
        data += [self.keys.item_bodies(account_id, p) for p in KINDS]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(*data)
            pipe.hexists(self.keys.crawl_stats(account_id), "last_crawl_at")
            found, crawled = await call(pipe.execute())
        return bool(found) or bool(crawled)

    async def stored(self, account_id: str) -> dict[str, int]:
        """How many items of each kind are kept now (by plural kind); a key of another
        type (written by something else than this store) counts as none."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for plural in KINDS:
                pipe.zcard(self.keys.items(account_id, plural))
            replies = await call_each(pipe.execute(raise_on_error=False))
        return {p: _reply_count(r) for p, r in zip(KINDS, replies, strict=True)}

    async def overview(self, account_id: str, plural: str, limit: int) -> AccountData:
        """The account's newest ``limit`` items of ``plural``, the counts kept and
        received, and the last crawl as its owner reports it in its heartbeat."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.exists(self.keys.account(account_id))
            pipe.hget(self.keys.account(account_id), "worker_id")
            exists, owner = await call(pipe.execute())
        worker_id = text(owner) if owner else None
        worker = await WorkerRegistry(self.redis, self.keys).get(worker_id) if worker_id else None
        return AccountData(
            account_id=account_id,
            exists=bool(exists),
            items=await self.newest(account_id, plural, limit),
            stored=await self.stored(account_id),
            received=await self.stats(account_id),
            worker_id=worker_id,
            worker_alive=worker is not None,
            task=worker.tasks.get(account_id) if worker else None,
        )

    async def newest(self, account_id: str, plural: str, limit: int) -> list[CrawledItem]:
        """The newest ``limit`` items, newest first; a stored body that does not
        validate (written by something else than this store) is skipped."""
        ids: list[Any] = await call(
            self.redis.zrevrange(self.keys.items(account_id, plural), 0, limit - 1)
        )
        if not ids:
            return []
        bodies: list[Any] = await call(
            self.redis.hmget(self.keys.item_bodies(account_id, plural), ids)
        )
        items = []
        for item_id, body in zip(ids, bodies, strict=True):
            if body is None:
                continue
            try:
                items.append(CrawledItem.model_validate_json(body))
            except ValidationError:
                log.debug("account %s: stored %s %r does not validate", account_id, plural, item_id)
        return items

    async def stats(self, account_id: str) -> CrawlStats:
        """Counts and the last crawl time; a value that does not parse counts as absent."""
        raw: dict[Any, Any] = await call(self.redis.hgetall(self.keys.crawl_stats(account_id)))
        d = {text(k): text(v) for k, v in raw.items()}
        return CrawlStats(
            comments=_count(d.get("comments")),
            dms=_count(d.get("dms")),
            last_crawl_at=_time(d.get("last_crawl_at")),
        )


def _reply_count(reply: Any) -> int:
    """A ZCARD's reply; a key of another type (its error reply) counts nothing."""
    return 0 if isinstance(reply, Exception) else max(0, int(reply))


def _count(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


def _time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None
