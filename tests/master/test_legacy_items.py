"""Crawled items an older hiscrm kept in Redis move into the database on a Master's
start (``hiscrm_master.legacy_items``), and their Redis copies are deleted: on
fakeredis and a real redis-server, into SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis

from hiscrm_bus.keys import Keys
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import BusSettings
from hiscrm_master.archive import Archive, Arrival, Filter, Kind
from hiscrm_master.legacy_items import move_legacy_items

Bus = tuple[Redis, BusSettings]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def archive(database_url: str) -> AsyncIterator[Archive]:
    archive = Archive.open(database_url)
    yield archive
    await archive.close()


def item(kind: Kind, n: int, text: str = "") -> CrawledItem:
    return CrawledItem(
        kind=kind,
        item_id=f"{kind[0]}{n}",
        text=text or f"{kind} {n}",
        author=f"fan{n}",
        created_at=T0 + timedelta(seconds=n),
        extra={"work_id": "w1"} if kind == "comment" else {"conversation_id": "cv1"},
    )


async def put_legacy(
    redis: Redis,
    keys: Keys,
    account: str,
    plural: str,
    items: Sequence[CrawledItem],
    bad: dict[str, str] | None = None,
) -> list[str]:
    """The items as an older hiscrm stored them: a sorted set of ids by creation time,
    a hash of id → the item as JSON, and the account's crawl stats; the keys written."""
    written = [
        keys.legacy_items(account, plural),
        keys.legacy_item_bodies(account, plural),
        keys.legacy_crawl_stats(account),
    ]
    scores = {i.item_id: i.created_at.timestamp() for i in items}
    bodies: dict[Any, Any] = {i.item_id: i.model_dump_json() for i in items}
    for item_id, body in (bad or {}).items():
        scores[item_id] = T0.timestamp()
        bodies[item_id] = body
    await redis.zadd(written[0], scores)
    await redis.hset(written[1], mapping=bodies)
    await redis.hset(written[2], mapping={plural: len(scores), "last_crawl_at": T0.isoformat()})
    return written


async def ids(archive: Archive, account: str, kind: Kind) -> list[str]:
    found = await archive.items(account, Filter(kind=kind, limit=None))
    return sorted(i.item_id for i in found)


async def test_legacy_items_move_into_the_database_once(bus: Bus, archive: Archive) -> None:
    redis, settings = bus
    keys = settings.keys
    comments1 = [item("comment", n, "这个好看" if n == 2 else "") for n in (1, 2, 3)]
    dms1 = [item("dm", 1), item("dm", 2)]
    comments2 = [item("comment", 1)]  # the same id, another account: another item
    dms2 = [item("dm", 7)]
    legacy = await put_legacy(
        redis, keys, "acc-1", "comments", comments1, bad={"c-bad": '{"kind": "comment"'}
    )
    legacy += await put_legacy(redis, keys, "acc-1", "dms", dms1)
    legacy += await put_legacy(
        redis,
        keys,
        "acc-2",
        "comments",
        comments2,
        # valid items, but not what the hash says: a DM among comments, another id
        bad={"c8": item("dm", 8).model_dump_json(), "c9": item("comment", 10).model_dump_json()},
    )
    legacy += await put_legacy(redis, keys, "acc-2", "dms", dms2)
    # another deployment's keys (another prefix) are not ours to move
    other = Keys("other-deployment:")
    elsewhere = await put_legacy(redis, other, "acc-1", "comments", [item("comment", 5)])
    # a Master of this version already stored one of the items
    await archive.store(
        [
            Arrival(
                CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=(comments1[1],))
            )
        ]
    )
    try:
        moved = await move_legacy_items(redis, keys, archive, "m1")
        assert moved == 6  # c1, c3, d1, d2 of acc-1; c1, d7 of acc-2

        assert await ids(archive, "acc-1", "comment") == ["c1", "c2", "c3"]
        assert await ids(archive, "acc-1", "dm") == ["d1", "d2"]
        assert await ids(archive, "acc-2", "comment") == ["c1"]
        assert await ids(archive, "acc-2", "dm") == ["d7"]
        # as the worker sent them, searchable, with their works and conversations
        assert await archive.items("acc-1", Filter(limit=None)) == comments1[::-1]
        assert await archive.items("acc-2", Filter(kind="dm")) == dms2
        assert [i.item_id for i in await archive.items("acc-1", Filter(grep="好看"))] == ["c2"]
        counts = await archive.counts(["acc-1", "acc-2"])
        assert (counts["acc-1"].works, counts["acc-1"].conversations) == (1, 1)
        # moved data is no crawl run: only the one batch stored above is
        assert (counts["acc-1"].crawl_runs, counts["acc-2"].crawl_runs) == (1, 0)

        assert await redis.exists(*legacy) == 0
        assert [k async for k in redis.scan_iter(match=f"{keys.prefix}*")] == []
        assert await redis.exists(*elsewhere) == 3

        # the next start finds nothing to move
        assert await move_legacy_items(redis, keys, archive, "m1") == 0
        assert await ids(archive, "acc-1", "comment") == ["c1", "c2", "c3"]
        assert (await archive.counts(["acc-2"]))["acc-2"].comments == 1
    finally:
        await redis.delete(*elsewhere)


async def test_every_page_of_a_large_account_moves(bus: Bus, archive: Archive) -> None:
    redis, settings = bus
    keys = settings.keys
    items = [item("comment", n) for n in range(1500)]  # more than a page (1000) of HSCAN
    legacy = await put_legacy(redis, keys, "acc-1", "comments", items)
    assert await move_legacy_items(redis, keys, archive, "m1") == 1500
    assert (await archive.counts(["acc-1"]))["acc-1"].comments == 1500
    assert await redis.exists(*legacy) == 0


async def test_a_removed_accounts_legacy_items_do_not_come_back(bus: Bus, archive: Archive) -> None:
    redis, settings = bus
    keys = settings.keys
    await archive.forget("acc-1", int(datetime.now(UTC).timestamp() * 1000))
    legacy = await put_legacy(redis, keys, "acc-1", "comments", [item("comment", 1)])
    legacy += await put_legacy(redis, keys, "acc-2", "comments", [item("comment", 1)])
    assert await move_legacy_items(redis, keys, archive, "m1") == 1
    assert await ids(archive, "acc-1", "comment") == []
    assert await ids(archive, "acc-2", "comment") == ["c1"]
    assert await redis.exists(*legacy) == 0
