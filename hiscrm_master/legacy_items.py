"""Crawled items that versions before the database kept in Redis (a capped sorted set
and a hash of bodies per account and kind): moved into the database on a Master's start,
then deleted from Redis. Idempotent: an item already in the database is left as it is,
so a Master killed half-way simply moves the rest next time."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis

from hiscrm_bus.connection import call, text
from hiscrm_bus.keys import Keys
from hiscrm_bus.messages import CrawlBatch, CrawledItem

from .archive import KINDS, Archive, Arrival

log = logging.getLogger(__name__)
PAGE = 1000


async def move_legacy_items(redis: Redis, keys: Keys, archive: Archive, sender: str) -> int:
    """Move every account's Redis-held items into the database; returns how many
    items were moved (new to the database)."""
    moved = 0
    for plural, kind in KINDS.items():
        pattern = keys.legacy_item_bodies_pattern(plural)
        async for key in redis.scan_iter(match=pattern, count=500):
            account_id = keys.legacy_account_of(text(key), plural)
            if account_id is not None:
                where = (account_id, plural, kind)
                moved += await _move(redis, keys, archive, sender, where)
    return moved


async def _move(
    redis: Redis, keys: Keys, archive: Archive, sender: str, where: tuple[str, str, str]
) -> int:
    account_id, plural, kind = where
    bodies = keys.legacy_item_bodies(account_id, plural)
    items: list[CrawledItem] = []
    skipped = 0
    cursor: Any = 0
    while True:
        cursor, page = await call(redis.hscan(bodies, cursor, count=PAGE))
        assert isinstance(page, dict)
        for item_id, body in page.items():
            try:
                item = CrawledItem.model_validate_json(body)
            except ValidationError:
                skipped += 1
                continue
            if item.kind == kind and item.item_id == text(item_id):
                items.append(item)
            else:
                skipped += 1
        if int(cursor) == 0:
            break
    new = 0
    for start in range(0, len(items), PAGE):
        batch = CrawlBatch(
            sender=sender,
            account_id=account_id,
            worker_id=sender,
            items=tuple(items[start : start + PAGE]),
        )
        (stored,) = await archive.store([Arrival(batch, crawl_run=False)])
        new += sum(stored.new.values())
    await call(
        redis.delete(
            keys.legacy_items(account_id, plural), bodies, keys.legacy_crawl_stats(account_id)
        )
    )
    log.info(
        "account %s: %d Redis-held %s moved to the database (%d new there%s); Redis copy deleted",
        account_id,
        len(items),
        plural,
        new,
        f", {skipped} that did not validate dropped" if skipped else "",
    )
    return new
