"""Crawled comments and DMs: de-duplicated by the platform's item id, stored per account,
capped so Redis memory stays bounded."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError
from redis.asyncio import Redis

from hiscrm_bus.connection import call
from hiscrm_bus.keys import Keys
from hiscrm_bus.messages import CrawlBatch, CrawledItem

log = logging.getLogger(__name__)
Kind = Literal["comment", "dm"]
KINDS: dict[str, Kind] = {"comments": "comment", "dms": "dm"}
DEFAULT_CAP = 1000

# KEYS: item zset, bodies hash, crawl stats hash
# ARGV: cap, crawled_at, stats field, then (id, score, body) triples
_STORE = """
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
    comments: int
    dms: int
    last_crawl_at: datetime | None


class IngestStore:
    def __init__(self, redis: Redis, keys: Keys, cap: int = DEFAULT_CAP) -> None:
        self.redis = redis
        self.keys = keys
        self.cap = cap
        self._store = redis.register_script(_STORE)

    async def store(self, batch: CrawlBatch) -> dict[Kind, int]:
        """Store the batch's new items; returns how many of each kind were new."""
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
            ]
            added[kind] = int(await call(self._store(keys=keys, args=args)))
        return added

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
        d = {_s(k): _s(v) for k, v in raw.items()}
        return CrawlStats(
            comments=_count(d.get("comments")),
            dms=_count(d.get("dms")),
            last_crawl_at=_time(d.get("last_crawl_at")),
        )


def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


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
