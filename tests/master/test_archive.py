"""The crawled-data database (``hiscrm_master.archive``): every test runs on SQLite and
on a real PostgreSQL (the ``database_url`` fixture), each on a fresh database."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Table, select
from sqlalchemy import text as sql

from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_master.archive import INT_MAX, Archive, Arrival, Counts, Filter, Stored
from hiscrm_master.database import DatabaseUnavailable, guarded
from hiscrm_master.schema import comments, conversations, crawl_runs, messages, works
from tests.postgres_server import PostgresServer

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# when Redis received a batch (its stream entry's clock, in ms)
R0 = int(T0.timestamp() * 1000) + 3_600_000

Opener = Callable[..., Archive]


@pytest.fixture
async def open_archive(database_url: str) -> AsyncIterator[Opener]:
    """Opens Archives on the test's database; closes them all after the test."""
    opened: list[Archive] = []

    def open_(**options: Any) -> Archive:
        archive = Archive.open(database_url, **options)
        opened.append(archive)
        return archive

    yield open_
    for archive in opened:
        await archive.close()


@pytest.fixture
def archive(open_archive: Opener) -> Archive:
    return open_archive()


def comment(
    n: int, text: str | None = None, *, at: datetime | None = None, author: str = "", **extra: Any
) -> CrawledItem:
    return CrawledItem(
        kind="comment",
        item_id=f"c{n}",
        text=f"comment {n}" if text is None else text,
        author=author,
        created_at=at or T0 + timedelta(seconds=n),
        extra=extra,
    )


def dm(
    n: int, text: str | None = None, *, at: datetime | None = None, author: str = "", **extra: Any
) -> CrawledItem:
    return CrawledItem(
        kind="dm",
        item_id=f"d{n}",
        text=f"message {n}" if text is None else text,
        author=author,
        created_at=at or T0 + timedelta(seconds=n),
        extra=extra,
    )


def batch(
    *items: CrawledItem, account: str = "acc-1", crawled_at: datetime | None = None
) -> CrawlBatch:
    return CrawlBatch(
        sender="w1",
        account_id=account,
        worker_id="w1",
        items=items,
        crawled_at=crawled_at or datetime.now(UTC),
    )


def arrive(b: CrawlBatch, received_ms: int = R0) -> Arrival:
    return Arrival(b, received_ms)


async def rows(archive: Archive, table: Table, account: str = "acc-1") -> list[dict[str, Any]]:
    """The table's rows of ``account``, as stored, in insertion (primary key) order."""
    query = select(table).where(table.c.account_id == account).order_by(*table.primary_key)
    async with archive.engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings()]


async def ids(archive: Archive, f: Filter, account: str = "acc-1") -> list[str]:
    return [i.item_id for i in await archive.items(account, f)]


async def counts(archive: Archive, account: str = "acc-1") -> Counts:
    return (await archive.counts([account]))[account]


# -- exactly once ----------------------------------------------------------------------


async def test_a_batch_stored_twice_stores_each_item_and_its_crawl_run_once(
    archive: Archive,
) -> None:
    b = batch(comment(1), comment(2), dm(1))
    assert await archive.store([arrive(b)]) == [Stored("acc-1", "w1", {"comment": 2, "dm": 1})]
    # the Master killed after the commit, before its XACK, reads the batch again
    assert await archive.store([arrive(b)]) == [Stored("acc-1", "w1", {})]

    c = await counts(archive)
    assert (c.comments, c.dms, c.crawl_runs, c.errors) == (2, 1, 1, 0)
    (run,) = await rows(archive, crawl_runs)
    assert (run["message_id"], run["found"], run["new_items"]) == (b.message_id, 3, 3)
    # read back as the worker sent them, newest first
    assert await archive.items("acc-1", Filter()) == [comment(2), comment(1)]
    assert await archive.items("acc-1", Filter(kind="dm")) == [dm(1)]


async def test_the_batches_of_one_read_are_stored_together_and_counted_once(
    archive: Archive,
) -> None:
    first = batch(comment(1), comment(2))
    second = batch(comment(2), comment(3), dm(1))  # c2 again: the first batch has it
    other = batch(comment(2), account="acc-2")  # the same id of another account is another item
    stored = await archive.store([arrive(first), arrive(second), arrive(other)])
    assert stored == [
        Stored("acc-1", "w1", {"comment": 2}),
        Stored("acc-1", "w1", {"comment": 1, "dm": 1}),
        Stored("acc-2", "w1", {"comment": 1}),
    ]
    assert await ids(archive, Filter(limit=None)) == ["c3", "c2", "c1"]
    assert await ids(archive, Filter(limit=None), "acc-2") == ["c2"]
    runs = {r["message_id"]: (r["found"], r["new_items"]) for r in await rows(archive, crawl_runs)}
    assert runs == {first.message_id: (2, 2), second.message_id: (3, 2)}

    # a later read: one batch seen before, one new whose items are all known but one
    third = batch(comment(1), comment(3), comment(4), dm(1))
    assert await archive.store([arrive(second), arrive(third)]) == [
        Stored("acc-1", "w1", {}),
        Stored("acc-1", "w1", {"comment": 1}),
    ]
    c = await counts(archive)
    assert (c.comments, c.dms, c.crawl_runs) == (4, 1, 3)
    assert c.last_crawl_at == max(first.crawled_at, second.crawled_at, third.crawled_at)


async def test_an_empty_batch_and_a_crawl_error_are_crawl_runs(archive: Archive) -> None:
    assert await archive.store([]) == []
    crawled = datetime(2026, 2, 1, 12, tzinfo=UTC)
    assert await archive.store([arrive(batch(crawled_at=crawled))]) == [Stored("acc-1", "w1", {})]
    await archive.record_error(
        "event-1", "acc-1", "w1", "login expired\x00", crawled + timedelta(1)
    )
    await archive.record_error("event-1", "acc-1", "w1", "login expired", crawled + timedelta(1))
    assert await counts(archive) == Counts(crawl_runs=2, errors=1, last_crawl_at=crawled)
    assert await archive.holds("acc-1")
    assert not await archive.holds("acc-2")
    assert await archive.counts([]) == {}


# -- works and conversations -----------------------------------------------------------


async def test_works_are_derived_from_comments_and_keep_their_title(archive: Archive) -> None:
    await archive.store(
        [
            arrive(
                batch(
                    comment(1, work_id="w1", work_title="Spring sale"),
                    comment(2, work_id="w2"),
                    comment(3),  # on no known work
                )
            )
        ]
    )
    later = R0 + 60_000
    await archive.store(
        [
            arrive(
                batch(comment(4, work_id="w1"), comment(5, work_id="w2", work_title="Unboxing")),
                later,
            )
        ]
    )
    found = {w["work_id"]: w for w in await rows(archive, works)}
    assert {k: w["title"] for k, w in found.items()} == {"w1": "Spring sale", "w2": "Unboxing"}
    received, received_later = (datetime.fromtimestamp(ms / 1000, UTC) for ms in (R0, later))
    assert (found["w1"]["first_seen_at"], found["w1"]["last_seen_at"]) == (
        received,
        received_later,
    )
    assert (await counts(archive)).works == 2
    assert await ids(archive, Filter(work="w1")) == ["c4", "c1"]


async def test_conversations_are_derived_from_messages(archive: Archive) -> None:
    def message(n: int, direction: str, **extra: Any) -> CrawledItem:
        if direction == "in":
            extra.update(sender_id="fan-9", author="Fan Nine")
        else:
            extra.update(sender_id="me", author="Me")
        author = extra.pop("author")
        return dm(n, author=author, conversation_id="cv1", direction=direction, **extra)

    async def conversation() -> dict[str, Any]:
        (row,) = await rows(archive, conversations)
        return row

    await archive.store([arrive(batch(message(50, "out")))])
    row = await conversation()
    assert (row["peer_id"], row["peer"], row["last_message_at"]) == (
        None,
        "",
        T0 + timedelta(seconds=50),
    )
    # an older incoming message names the peer and leaves the newest time
    await archive.store([arrive(batch(message(30, "in")))])
    row = await conversation()
    assert (row["peer_id"], row["peer"], row["last_message_at"]) == (
        "fan-9",
        "Fan Nine",
        T0 + timedelta(seconds=50),
    )
    # a newer reply of ours moves the time and keeps the peer; within one batch too
    await archive.store([arrive(batch(message(90, "out"), message(70, "in"), message(80, "out")))])
    row = await conversation()
    assert (row["peer_id"], row["peer"], row["last_message_at"]) == (
        "fan-9",
        "Fan Nine",
        T0 + timedelta(seconds=90),
    )
    assert (await counts(archive)).conversations == 1
    assert await ids(archive, Filter(kind="dm", work="cv1", limit=2)) == ["d90", "d80"]
    assert await ids(archive, Filter(kind="dm", author="fan-9")) == ["d70", "d30"]


# -- removal ---------------------------------------------------------------------------


async def test_forget_deletes_what_redis_received_up_to_the_mark(archive: Archive) -> None:
    mark = R0 + 1000
    await archive.store(
        [
            arrive(
                batch(
                    comment(1, work_id="w1", work_title="t"),
                    comment(2),
                    dm(1, conversation_id="cv1", sender_id="fan", direction="in"),
                ),
                R0,
            ),
            arrive(batch(comment(3)), mark),  # received at the very mark
            arrive(batch(comment(1), dm(1), account="acc-2"), R0),
        ]
    )
    # stored before the removal was applied, but received after it
    await archive.store([arrive(batch(comment(4)), mark + 1)])

    removed = await archive.forget("acc-1", mark)
    assert removed.items == 4
    assert removed.rows == {
        "comments": 3,
        "messages": 1,
        "crawl_runs": 2,
        "works": 1,
        "conversations": 1,
    }
    assert await ids(archive, Filter(limit=None)) == ["c4"]
    assert await archive.items("acc-1", Filter(kind="dm")) == []
    c = await counts(archive)
    assert (c.comments, c.dms, c.works, c.conversations, c.crawl_runs) == (1, 0, 0, 0, 1)
    # the other account is untouched
    c2 = await counts(archive, "acc-2")
    assert (c2.comments, c2.dms, c2.crawl_runs) == (1, 1, 1)
    assert await ids(archive, Filter(limit=None), "acc-2") == ["c1"]


async def test_a_batch_redis_received_before_the_removal_is_refused(archive: Archive) -> None:
    mark = R0 + 1000
    await archive.store([arrive(batch(comment(1)), R0)])
    await archive.forget("acc-1", mark)

    late = batch(comment(2), dm(2))  # received before the removal, stored after it
    at_mark = batch(comment(3))
    added_again = batch(comment(4), dm(4))  # the account added again: a new batch
    stored = await archive.store(
        [arrive(late, R0 + 500), arrive(at_mark, mark), arrive(added_again, mark + 1)]
    )
    assert stored == [
        Stored("acc-1", "w1", {}, refused=True),
        Stored("acc-1", "w1", {}, refused=True),
        Stored("acc-1", "w1", {"comment": 1, "dm": 1}),
    ]
    assert await ids(archive, Filter(limit=None)) == ["c4"]
    assert await ids(archive, Filter(kind="dm")) == ["d4"]
    runs = [r["message_id"] for r in await rows(archive, crawl_runs)]
    assert runs == [added_again.message_id]

    # an older removal applied late does not move the mark back
    await archive.forget("acc-1", R0)
    (refused,) = await archive.store([arrive(batch(comment(5)), R0 + 500)])
    assert refused.refused
    assert await ids(archive, Filter(limit=None)) == ["c4"]


async def test_forget_of_one_account_leaves_the_others_intact(archive: Archive) -> None:
    await archive.store(
        [
            arrive(batch(comment(1, work_id="w"), dm(1, conversation_id="cv"), account="acc-1")),
            arrive(batch(comment(1, work_id="w"), dm(1, conversation_id="cv"), account="acc-2")),
        ]
    )
    never_stored = await archive.forget("acc-3", R0 + 1000)
    assert never_stored.items == 0
    await archive.forget("acc-2", R0 + 1000)
    c = await counts(archive, "acc-1")
    assert (c.comments, c.dms, c.works, c.conversations, c.crawl_runs) == (1, 1, 1, 1, 1)
    assert await counts(archive, "acc-2") == Counts()
    assert await archive.items("acc-1", Filter()) == [comment(1, work_id="w")]
    # a batch of acc-1 received long ago is not refused: only acc-2 was removed
    (stored,) = await archive.store([arrive(batch(comment(2)), 1)])
    assert stored == Stored("acc-1", "w1", {"comment": 1})


# -- retention -------------------------------------------------------------------------


async def test_prune_deletes_what_is_past_retention_and_keeps_the_rest(
    open_archive: Opener,
) -> None:
    now = datetime.now(UTC)
    old, new = now - timedelta(days=30), now - timedelta(days=1)
    # stored while nothing was pruned; then the retention is set to a week
    keep_all = open_archive()
    assert await keep_all.prune() == 0
    await keep_all.store(
        [
            arrive(
                batch(
                    comment(1, at=old, work_id="w-old"),
                    dm(1, at=old, conversation_id="cv-old"),
                    crawled_at=old,
                ),
                int(old.timestamp() * 1000),
            ),
            arrive(
                batch(
                    comment(2, at=new, work_id="w-new"),
                    dm(2, at=new, conversation_id="cv-new"),
                    comment(3, at=new),
                    crawled_at=new,
                ),
                int(new.timestamp() * 1000),
            ),
        ]
    )
    week = open_archive(retention_days=7)
    assert await week.prune() == 2
    assert await ids(week, Filter(limit=None)) == ["c3", "c2"]
    assert await ids(week, Filter(kind="dm")) == ["d2"]
    assert [w["work_id"] for w in await rows(week, works)] == ["w-new"]
    assert [c["conversation_id"] for c in await rows(week, conversations)] == ["cv-new"]
    assert [r["crawled_at"] for r in await rows(week, crawl_runs)] == [new]
    # again: nothing more is past retention
    assert await week.prune() == 0
    # a day later by the given clock, the newer items are past a retention of one day
    day = open_archive(retention_days=1)
    assert await day.prune(now + timedelta(days=1)) == 3
    assert await counts(day) == Counts()


async def test_store_skips_items_past_retention(open_archive: Opener) -> None:
    archive = open_archive(retention_days=7)
    now = datetime.now(UTC)
    b = batch(
        comment(1, at=now - timedelta(days=8)),
        comment(2, at=now - timedelta(days=6)),
        dm(1, at=now - timedelta(days=100)),
    )
    assert await archive.store([arrive(b)]) == [Stored("acc-1", "w1", {"comment": 1})]
    assert await ids(archive, Filter(limit=None)) == ["c2"]
    assert await archive.items("acc-1", Filter(kind="dm")) == []
    (run,) = await rows(archive, crawl_runs)
    assert (run["found"], run["new_items"]) == (3, 1)


# -- search ----------------------------------------------------------------------------

TEXTS = {
    "zh": "这个产品真的很好看，在哪里买？",
    "buy": "Where can I BUY this?",
    "percent": "100% cotton",
    # what the needles below would match if %, _ or \ were wildcards or escapes
    "decoy": "100 cotton, the cat: wow",
    "underscore": "snake_case name",
    "quote": 'He said "wow" twice',
    "backslash": "back\\slash",
}


@pytest.fixture
async def searched(archive: Archive) -> Archive:
    items = [comment(n, t, work_id=k) for n, (k, t) in enumerate(TEXTS.items(), 1)]
    await archive.store([arrive(batch(*items))])
    return archive


async def grep(archive: Archive, needle: str) -> set[str]:
    found = await archive.items("acc-1", Filter(grep=needle, limit=None))
    return {str(i.extra["work_id"]) for i in found}


@pytest.mark.parametrize(
    ("needle", "expected"),
    [
        ("很好看", {"zh"}),  # Chinese: no spaces to split words at
        ("在哪里买？", {"zh"}),
        ("buy this", {"buy"}),
        ("BUY THIS?", {"buy"}),
        ("wHeRe", {"buy"}),
        ("cotton", {"percent", "decoy"}),
        ("no such text", set()),
    ],
)
async def test_grep_finds_a_substring_in_any_case(
    searched: Archive, needle: str, expected: set[str]
) -> None:
    assert await grep(searched, needle) == expected


async def test_grep_finds_one_and_two_character_needles(searched: Archive) -> None:
    assert await grep(searched, "好看") == {"zh"}
    assert await grep(searched, "买") == {"zh"}
    assert await grep(searched, "?") == {"buy"}
    assert await grep(searched, "CA") == {"buy", "decoy", "underscore"}
    assert await grep(searched, "x") == set()


async def test_grep_takes_wildcards_quotes_and_backslashes_literally(searched: Archive) -> None:
    for needle, expected in [
        ("%", {"percent"}),
        ("0%", {"percent"}),
        ("100%", {"percent"}),
        ("0% c", {"percent"}),
        ("_", {"underscore"}),
        ("e_", {"underscore"}),
        ("e_c", {"underscore"}),
        ('"', {"quote"}),
        ('"wow"', {"quote"}),
        ('said "wow', {"quote"}),
        ("\\", {"backslash"}),
        ("k\\", {"backslash"}),
        ("k\\s", {"backslash"}),
        ("\\%", set()),
        ("*", set()),
        ("wow OR cotton", set()),
    ]:
        assert await grep(searched, needle) == expected, needle


async def test_grep_finds_one_comment_among_thousands(archive: Archive) -> None:
    items = [comment(n, f"comment number {n}: nice") for n in range(5000)]
    items[3210] = comment(3210, "这是独角兽 UNICORN 评论")
    await archive.store([arrive(batch(*items))])
    assert await ids(archive, Filter(grep="unicorn")) == ["c3210"]
    assert await ids(archive, Filter(grep="独角兽")) == ["c3210"]
    assert await ids(archive, Filter(grep="number 4321:")) == ["c4321"]
    assert await ids(archive, Filter(grep="NICE", limit=3)) == ["c4999", "c4998", "c4997"]
    assert (await counts(archive)).comments == 5000


async def test_filters_combine_with_grep(archive: Archive) -> None:
    alice: dict[str, Any] = {"author": "Alice", "user_id": "u-a"}
    bob: dict[str, Any] = {"author": "Bob", "user_id": "u-b"}
    await archive.store(
        [
            arrive(
                batch(
                    comment(1, "what is the price", work_id="w1", **alice),
                    comment(2, "price please", work_id="w1", **bob),
                    comment(3, "PRICE?", work_id="w2", **alice),
                    comment(4, "nice video", work_id="w1", **alice),
                    comment(5, "the price is high", work_id="w2", **bob),
                    dm(6, "price for two?", author="Alice", conversation_id="cv1", sender_id="u-a"),
                    dm(7, "hello", author="Bob", conversation_id="cv2", sender_id="u-b"),
                )
            )
        ]
    )
    assert await ids(archive, Filter(grep="price")) == ["c5", "c3", "c2", "c1"]
    assert await ids(archive, Filter(grep="price", limit=2)) == ["c5", "c3"]
    assert await ids(archive, Filter(grep="price", work="w1")) == ["c2", "c1"]
    assert await ids(archive, Filter(grep="pr", work="w1")) == ["c2", "c1"]
    assert await ids(archive, Filter(grep="price", author="u-a")) == ["c3", "c1"]
    assert await ids(archive, Filter(grep="price", author="ALICE")) == ["c3", "c1"]
    assert await ids(archive, Filter(grep="price", since=T0 + timedelta(seconds=3))) == [
        "c5",
        "c3",
    ]
    everything = Filter(grep="Price", work="w1", author="alice", since=T0 + timedelta(seconds=1))
    assert await ids(archive, everything) == ["c1"]
    assert await ids(archive, Filter(work="w1")) == ["c4", "c2", "c1"]
    assert await ids(archive, Filter(author="Bob", work="w1")) == ["c2"]
    assert await ids(archive, Filter(grep="price", author="u-c")) == []
    # DMs: their own table; work means the conversation, author the sender
    assert await ids(archive, Filter(kind="dm", grep="price")) == ["d6"]
    assert await ids(archive, Filter(kind="dm", grep="pr")) == ["d6"]
    assert await ids(archive, Filter(kind="dm", work="cv2")) == ["d7"]
    assert await ids(archive, Filter(kind="dm", author="u-b")) == ["d7"]
    assert await ids(archive, Filter(kind="dm", grep="video")) == []
    assert await ids(archive, Filter(kind="dm", limit=None)) == ["d7", "d6"]


async def test_items_are_newest_first(archive: Archive) -> None:
    # stored out of order, two at the same time: the later stored comes first
    same = T0 + timedelta(seconds=10)
    await archive.store([arrive(batch(comment(3), comment(1), comment(10, at=same)))])
    await archive.store([arrive(batch(comment(2), comment(11, at=same)))])
    assert await ids(archive, Filter(limit=None)) == ["c11", "c10", "c3", "c2", "c1"]
    assert await ids(archive, Filter(limit=1)) == ["c11"]
    assert await ids(archive, Filter(since=T0 + timedelta(seconds=2))) == [
        "c11",
        "c10",
        "c3",
        "c2",
    ]
    assert await ids(archive, Filter(), "acc-nobody") == []


# -- export ----------------------------------------------------------------------------


async def test_export_yields_every_matching_item_once_in_pages(archive: Archive) -> None:
    for first in (1, 11, 21):  # three batches, another account's items in between
        items = [
            comment(n, f"comment {n} {'even' if n % 2 == 0 else 'odd'}")
            for n in range(first, first + 10)
        ]
        await archive.store([arrive(batch(*items)), arrive(batch(comment(first), account="acc-2"))])

    pages = [page async for page in archive.export("acc-1", Filter(limit=3), page=7)]
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]  # the filter's limit is ignored
    assert [i.item_id for p in pages for i in p] == [f"c{n}" for n in range(1, 31)]

    evens = [page async for page in archive.export("acc-1", Filter(grep="EVEN"), page=7)]
    assert [len(p) for p in evens] == [7, 7, 1]
    assert [i.item_id for p in evens for i in p] == [f"c{n}" for n in range(2, 31, 2)]
    assert [i.item_id async for p in archive.export("acc-1", Filter(grep="ev"), 7) for i in p] == [
        f"c{n}" for n in range(2, 31, 2)
    ]

    # items stored while an export runs come after, never twice
    seen: list[str] = []
    async for page in archive.export("acc-1", Filter(since=T0 + timedelta(seconds=20)), page=7):
        seen += [i.item_id for i in page]
        if len(seen) == 7:
            await archive.store([arrive(batch(comment(31), comment(25), comment(5)))])
    assert seen == [f"c{n}" for n in range(20, 32)]

    assert [p async for p in archive.export("acc-1", Filter(kind="dm"), page=7)] == []
    assert [p async for p in archive.export("acc-1", Filter(grep="none"), page=7)] == []


# -- bad data --------------------------------------------------------------------------


async def test_bad_data_is_stored_clipped_and_read_back(archive: Archive) -> None:
    nul = comment(
        1,
        "a fan's\x00text",
        author="nul\x00author",
        work_id="w" * 10_000,
        user_id=12345,
        digg_count=3**40,
        reply_count="many",
        nested={"key\x00": ["v\x00", 1.5, None, True]},
    )
    negative = comment(2, digg_count=-5, like_count=7, reply_count=True)
    odd_id = CrawledItem(kind="comment", item_id="id\x00nul", text="x", created_at=T0)
    message = dm(3, "hi\x00", author="\x00", conversation_id="c" * 300, direction="sideways")
    good = batch(comment(4, "fine"))
    stored = await archive.store([arrive(batch(nul, negative, odd_id, message)), arrive(good)])
    assert stored == [
        Stored("acc-1", "w1", {"comment": 3, "dm": 1}),
        Stored("acc-1", "w1", {"comment": 1}),
    ]

    by_id = {r["item_id"]: r for r in await rows(archive, comments)}
    assert set(by_id) == {"c1", "c2", "c4", "id\ufffdnul"}
    row = by_id["c1"]
    assert (row["text"], row["author"]) == ("a fan's\ufffdtext", "nul\ufffdauthor")
    assert row["work_id"] == "w" * 200
    assert (row["author_id"], row["like_count"], row["reply_count"]) == ("12345", INT_MAX, None)
    assert (by_id["c2"]["like_count"], by_id["c2"]["reply_count"]) == (0, None)
    (work,) = [w for w in await rows(archive, works) if w["work_id"].startswith("w")]
    assert work["work_id"] == "w" * 200
    (msg,) = await rows(archive, messages)
    assert (msg["text"], msg["author"], msg["direction"]) == ("hi\ufffd", "\ufffd", None)
    assert msg["conversation_id"] == "c" * 200

    read = {i.item_id: i for i in await archive.items("acc-1", Filter(limit=None))}
    assert read["c1"].text == "a fan's\ufffdtext"
    assert read["c1"].author == "nul\ufffdauthor"
    assert read["c1"].extra == {
        "work_id": "w" * 10_000,
        "user_id": 12345,
        "digg_count": 3**40,
        "reply_count": "many",
        "nested": {"key\ufffd": ["v\ufffd", 1.5, None, True]},
    }
    assert read["c4"] == comment(4, "fine")
    assert await ids(archive, Filter(grep="fan's\ufffdt")) == ["c1"]
    (back,) = await archive.items("acc-1", Filter(kind="dm"))
    assert (back.text, back.extra["direction"]) == ("hi\ufffd", "sideways")
    # stored once: the same bad batch again adds nothing
    (again,) = await archive.store([arrive(batch(nul, odd_id, message))])
    assert again.new == {}


# -- the schema ------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_safe_at_once(open_archive: Opener) -> None:
    first = open_archive()
    await first.ready()
    await first.ready()
    await first.store([arrive(batch(comment(1)))])
    # three Masters starting at once on the same database
    starting = [open_archive() for _ in range(3)]
    await asyncio.gather(*(a.ready() for a in starting))
    await starting[0].store([arrive(batch(comment(2)))])
    for archive in (first, *starting):
        assert await ids(archive, Filter()) == ["c2", "c1"]
        async with archive.engine.connect() as conn:
            version = (await conn.execute(sql("SELECT version_num FROM alembic_version"))).all()
        assert version == [("0001",)]


async def test_three_masters_migrate_a_new_database_at_once(open_archive: Opener) -> None:
    starting = [open_archive() for _ in range(3)]
    await asyncio.gather(*(a.ready() for a in starting))
    stored = await asyncio.gather(
        *(a.store([arrive(batch(comment(n)))]) for n, a in enumerate(starting))
    )
    assert stored == [[Stored("acc-1", "w1", {"comment": 1})]] * 3
    assert await ids(starting[0], Filter()) == ["c2", "c1", "c0"]


# -- the database down -----------------------------------------------------------------


async def test_a_killed_postgresql_is_unavailable_and_nothing_is_written(
    own_postgres_server: PostgresServer,
) -> None:
    server = own_postgres_server
    url = server.create_database("hiscrm")
    archive = Archive.open(url)
    try:
        await archive.store([arrive(batch(comment(1)))])
        server.psql("CHECKPOINT")  # the commit survives the kill (synchronous_commit=off)
        server.kill()

        b = batch(comment(2), dm(2, conversation_id="cv"))
        with pytest.raises(DatabaseUnavailable) as raised:
            await archive.store([arrive(b)])
        message = str(raised.value)
        assert message.startswith(
            f"database postgresql+asyncpg://hiscrm:***@127.0.0.1:{server.port}/hiscrm"
        )
        assert "storing crawled items" in message
        assert server.password not in message
        assert quote(server.password, safe="") not in message
        with pytest.raises(DatabaseUnavailable):
            await archive.ping()
        with pytest.raises(DatabaseUnavailable):
            await archive.counts(["acc-1"])

        server.start()
        await archive.ping()
        c = await counts(archive)
        assert (c.comments, c.dms, c.conversations, c.crawl_runs) == (1, 0, 0, 1)
        # the same batch, read again from the stream: all of it is new
        assert await archive.store([arrive(b)]) == [Stored("acc-1", "w1", {"comment": 1, "dm": 1})]
        c = await counts(archive)
        assert (c.comments, c.dms, c.conversations, c.crawl_runs) == (2, 1, 1, 2)
    finally:
        await archive.close()


async def test_a_missing_sqlite_file_is_unavailable_to_a_reader_and_not_created(
    tmp_path: Path,
) -> None:
    path = tmp_path / "nowhere" / "hiscrm.db"
    threads = set(threading.enumerate())
    archive = Archive.open(f"sqlite+aiosqlite:///{path}", create=False)
    try:
        with pytest.raises(DatabaseUnavailable, match="no database there yet"):
            await archive.ping()
        with pytest.raises(
            DatabaseUnavailable, match=re.escape(f"database sqlite+aiosqlite:///{path}")
        ):
            await archive.counts(["acc-1"])
        with pytest.raises(DatabaseUnavailable):
            await archive.items("acc-1", Filter())
    finally:
        await archive.close()
        # aiosqlite stops the thread of a connection that failed to open by handing
        # it one more call, whose result it posts to this event loop: let those
        # threads end before the loop does (or they raise "Event loop is closed")
        for thread in set(threading.enumerate()) - threads:
            if thread.name.endswith("(_connection_worker_thread)"):
                thread.join(10)
    assert not path.exists()
    assert not path.parent.exists()


async def test_only_errors_that_mean_down_for_now_are_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable, match="database db unavailable while testing: gone"):
        async with guarded("db", "testing"):
            raise ConnectionResetError("gone")
    with pytest.raises(ValueError, match="a bug"):
        async with guarded("db", "testing"):
            raise ValueError("a bug")
