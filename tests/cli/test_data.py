"""``hiscrm data`` reads the crawled-data database (issue 16): what the Master stored,
newest first, filtered by kind, time, work, author and text (Chinese or not, in any
case), with counts that are what is stored; ``hiscrm data export`` writes every match
as CSV or JSON lines. The last crawl is the one the worker reports, even when it found
nothing and so sent no batch (issue 15, finding 4). A database that does not answer is
one sentence, its password never shown."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import termios
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import TaskReport, WorkerInfo, WorkerRegistry
from hiscrm_master.archive import Archive, Arrival
from tests.cli.process import cli_env, hiscrm
from tests.cli.test_terminal_safety import AUTHOR, TEXT, unsafe_chars
from tests.postgres_server import PostgresServer, free_port

Bus = tuple[Redis, BusSettings]
Result = tuple[int, str, str]
NOW = datetime.now(UTC).replace(microsecond=0)
CRAWLED = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
# what a CSV cell must survive
AWKWARD = '他说 "好看, 真的"\n第二行, with a comma'


def comment(
    item_id: str, text: str, age: timedelta, author: str, user: str, work: str, **extra: Any
) -> CrawledItem:
    return CrawledItem(
        kind="comment",
        item_id=item_id,
        text=text,
        author=author,
        created_at=NOW - age,
        extra={"work_id": work, "user_id": user, "digg_count": 3, **extra},
    )


def dm(item_id: str, text: str, age: timedelta, conversation: str, sender: str) -> CrawledItem:
    return CrawledItem(
        kind="dm",
        item_id=item_id,
        text=text,
        author="小明" if sender == "u-ming" else "me",
        created_at=NOW - age,
        extra={
            "conversation_id": conversation,
            "sender_id": sender,
            "direction": "in" if sender == "u-ming" else "out",
        },
    )


COMMENTS = (
    comment("c1", "第一条评论：很好看", timedelta(days=10), "小明", "u-ming", "v-100"),
    comment("c2", "Great VIDEO, 100% love it", timedelta(days=3), "Alice", "u-alice", "v-100"),
    comment("c3", "great job", timedelta(hours=2), "Bob", "u-bob", "v-200"),
    comment("c4", AWKWARD, timedelta(hours=1), "小明", "u-ming", "v-200", parent_id="c3"),
)
DMS = (
    dm("d1", "你好，请问价格", timedelta(days=5), "conv-1", "u-ming"),
    dm("d2", "hello there", timedelta(minutes=30), "conv-2", "u-me"),
)


def batch(*items: CrawledItem, account: str = "acc-1") -> CrawlBatch:
    return CrawlBatch(
        sender="w1", account_id=account, worker_id="w1", crawled_at=CRAWLED, items=items
    )


async def store(url: str, *batches: CrawlBatch) -> None:
    """What the Master does with the batches it reads (an empty call: it started)."""
    archive = Archive.open(url)
    try:
        await archive.ready()
        await archive.store([Arrival(b, int(time.time() * 1000)) for b in batches])
    finally:
        await archive.close()


async def add_account(redis: Redis, settings: BusSettings) -> None:
    await AccountStore(redis, settings.keys).create(
        AccountConfig(id="acc-1", platform="sandbox", worker_id="w1")
    )


async def each(settings: BusSettings, *calls: tuple[str, ...]) -> list[Result]:
    """``hiscrm`` run once per argument list, side by side; the results in order."""
    results: dict[int, Result] = {}

    async def one(n: int, args: tuple[str, ...]) -> None:
        results[n] = await hiscrm(settings, *args)

    async with anyio.create_task_group() as tg:
        for n, args in enumerate(calls):
            tg.start_soon(one, n, args)
    return [results[n] for n in range(len(calls))]


def fmt(item: CrawledItem) -> str:
    return item.created_at.strftime("%Y-%m-%d %H:%M:%S")


def ids(result: Result) -> list[str]:
    code, out, err = result
    assert code == 0, err
    return [i["item_id"] for i in json.loads(out)["items"]]


@pytest.fixture
def db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database on each engine, which the CLI processes use."""
    monkeypatch.setenv("HISCRM_DATABASE_URL", database_url)
    return database_url


async def test_show_finds_what_is_stored_newest_first(real: Bus, db: str) -> None:
    redis, settings = real
    await add_account(redis, settings)
    await store(db, batch(*COMMENTS[:2], DMS[0]), batch(*COMMENTS[2:], DMS[1]))
    # another account's items are never shown
    await store(db, batch(comment("x1", "great", timedelta(0), "Bob", "u-bob", "v-1"), account="b"))
    (table, limited, everything, dms, search, *found) = await each(
        settings,
        ("data", "acc-1", "--limit", "2"),
        ("data", "acc-1", "--json", "--limit", "2"),
        ("data", "show", "acc-1", "--json"),
        ("data", "acc-1", "--json", "--kind", "dms"),
        ("data", "acc-1", "--json", "--grep", "GREAT"),
        ("data", "acc-1", "--json", "--grep", "好看"),  # two characters
        ("data", "acc-1", "--json", "--grep", "很好看"),  # three: the trigram index
        ("data", "acc-1", "--json", "--grep", "0%"),  # LIKE's wildcard taken as text
        ("data", "acc-1", "--json", "--grep", "价格", "--kind", "dms"),
    )

    code, out, err = table
    assert code == 0, err
    assert "4 comments on 2 works, 2 DMs in 2 conversations stored; 2 crawl batches" in out
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["c4", fmt(COMMENTS[3]), "小明", '他说 "好看, 真的"\\n第二行, with a comma', "v-200", "c3"],
        ["c3", fmt(COMMENTS[2]), "Bob", "great job", "v-200", ""],
    ]
    assert "last crawl unknown: worker w1 is not alive" in out
    assert ids(limited) == ["c4", "c3"]
    assert ids(everything) == ["c4", "c3", "c2", "c1"]
    assert ids(dms) == ["d2", "d1"]
    assert ids(search) == ["c3", "c2"]  # any case

    # every item comes back as the worker sent it, and the counts are what is stored
    doc = json.loads(everything[1])
    assert [CrawledItem.model_validate(i) for i in doc["items"]] == list(reversed(COMMENTS))
    assert [CrawledItem.model_validate(i) for i in json.loads(dms[1])["items"]] == [DMS[1], DMS[0]]
    assert {k: doc[k] for k in ("comments", "dms", "works", "conversations")} == {
        "comments": 4,
        "dms": 2,
        "works": 2,
        "conversations": 2,
    }
    assert (doc["account"], doc["account_exists"], doc["kind"]) == ("acc-1", True, "comments")
    assert (doc["crawl_batches"], doc["crawl_errors"]) == (2, 0)
    assert doc["last_batch_at"] == CRAWLED.isoformat()
    assert (doc["worker"], doc["worker_alive"], doc["task"], doc["last_crawl_at"]) == (
        "w1",
        False,
        None,
        None,
    )

    assert [ids(r) for r in found] == [["c4", "c1"], ["c1"], ["c2"], ["d1"]]


async def test_filters_by_time_work_and_author(real: Bus) -> None:
    redis, settings = real
    await add_account(redis, settings)
    await store(os.environ["HISCRM_DATABASE_URL"], batch(*COMMENTS, *DMS))
    four_days_ago = (NOW - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M")  # naive: UTC
    two_days_ago = (NOW - timedelta(days=2)).isoformat()
    found = await each(
        settings,
        ("data", "acc-1", "--json", "--since", "7d"),
        ("data", "acc-1", "--json", "--since", two_days_ago),
        ("data", "acc-1", "--json", "--since", four_days_ago),
        ("data", "acc-1", "--json", "--since", "90m"),
        ("data", "acc-1", "--json", "--work", "v-100"),
        ("data", "acc-1", "--json", "--author", "u-ming"),
        ("data", "acc-1", "--json", "--author", "alice"),  # a name, in any case
        ("data", "acc-1", "--json", "--work", "v-200", "--author", "小明"),
        ("data", "acc-1", "--json", "--kind", "dms", "--work", "conv-1"),
        ("data", "acc-1", "--json", "--kind", "dms", "--author", "u-me"),
        ("data", "acc-1", "--json", "--grep", "Great Vid"),
        ("data", "acc-1", "--json", "--grep", "no such words"),
        ("data", "acc-1", "--json", "--grep", "great", "--since", "1d", "--limit", "1"),
    )
    assert [ids(r) for r in found] == [
        ["c4", "c3", "c2"],
        ["c4", "c3"],
        ["c4", "c3", "c2"],
        ["c4"],
        ["c2", "c1"],
        ["c4", "c1"],
        ["c2"],
        ["c4"],
        ["d1"],
        ["d2"],
        ["c2"],
        [],
        ["c3"],
    ]


async def test_a_bad_option_is_one_sentence(real: Bus) -> None:
    redis, settings = real
    await add_account(redis, settings)
    await store(os.environ["HISCRM_DATABASE_URL"], batch(*COMMENTS))
    results = await each(
        settings,
        ("data", "acc-1", "--since", "yesterday"),
        ("data", "acc-1", "--since", "2026-13-45"),
        ("data", "acc-1", "--kind", "likes"),
        ("data", "acc-1", "--grep", "  "),
        ("data", "export", "acc-1", "--format", "xml"),
        ("data", "export", "acc-1", "--since", "soon"),
        ("data", "acc-1", "--since", "1000000d"),
        ("data", "export", "acc-1", "--since", "99999999999999d"),
        ("data", "acc-1", "--since", "9" * 400 + "w"),  # a float of infinity
    )
    for result, error in zip(
        results,
        (
            "error: --since 'yesterday' is neither an ISO date/time (2026-11-30T08:00) "
            "nor 30m/12h/7d",
            "error: --since '2026-13-45' is neither",
            "error: --kind must be one of comments, dms",
            "error: --grep needs some text to look for",
            "error: --format must be csv or jsonl",
            "error: --since 'soon' is neither",
            "error: --since '1000000d' reaches back more than 100 years (36500d)",
            "error: --since '99999999999999d' reaches back more than 100 years",
            "error: --since '999",
        ),
        strict=True,
    ):
        code, out, err = result
        assert (code, out) == (2, ""), err
        assert err.startswith(error) and err.count("\n") == 1, err


async def test_since_the_ends_of_the_calendar_is_everything_or_nothing(real: Bus) -> None:
    """Dates whose time zone puts them out of the calendar in UTC are clamped to its
    ends (year 1 at +01:00 had failed as it was bound to the query)."""
    redis, settings = real
    await add_account(redis, settings)
    await store(os.environ["HISCRM_DATABASE_URL"], batch(*COMMENTS))
    found = await each(
        settings,
        ("data", "acc-1", "--json", "--since", "0001-01-01T00:00+01:00"),
        ("data", "acc-1", "--json", "--since", "0001-01-01"),
        ("data", "acc-1", "--json", "--since", "9999-12-31T23:59-05:00"),
        ("data", "acc-1", "--json", "--since", "36500d"),
    )
    assert [ids(r) for r in found] == [
        ["c4", "c3", "c2", "c1"],
        ["c4", "c3", "c2", "c1"],
        [],
        ["c4", "c3", "c2", "c1"],
    ]
    code, out, err = await hiscrm(
        settings, "data", "export", "acc-1", "--since", "0001-01-01T00:00+14:00"
    )
    assert (code, err) == (0, "") and len(out.splitlines()) == 4


async def test_an_unknown_account_is_exit_1(real: Bus) -> None:
    redis, settings = real
    await add_account(redis, settings)
    # the database holds data, of another account
    await store(os.environ["HISCRM_DATABASE_URL"], batch(*COMMENTS))
    for code, out, err in await each(
        settings, ("data", "nope"), ("data", "nope", "--json"), ("data", "show", "nope")
    ):
        assert (code, out, err.strip()) == (1, "", "error: no account 'nope'")


async def test_before_any_master_ran_data_says_where_it_looked(real: Bus, tmp_path: Path) -> None:
    redis, settings = real
    await add_account(redis, settings)
    url = os.environ["HISCRM_DATABASE_URL"]
    db_file = tmp_path / "master.db"
    for code, out, err in await each(
        settings, ("data", "acc-1"), ("data", "export", "acc-1", "--format", "csv")
    ):
        assert (code, out) == (2, ""), err
        assert err.startswith(f"error: database {url} unavailable: there is no file {db_file} ")
        assert "(no database there yet: is HISCRM_DATABASE_URL the Master's?)" in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert not db_file.exists()  # a reader creates no database


async def test_an_unreachable_database_is_one_sentence_without_its_password(
    real: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, settings = real
    await add_account(redis, settings)
    port = free_port()  # nothing listens there
    monkeypatch.setenv(
        "HISCRM_DATABASE_URL", f"postgresql+asyncpg://u:secretpw@127.0.0.1:{port}/db"
    )
    earlier = tmp_path / "earlier.csv"
    earlier.write_text("an export made earlier\n")
    results = await each(
        settings,
        ("data", "acc-1"),
        ("data", "acc-1", "--json"),
        ("data", "export", "acc-1"),
        ("data", "export", "acc-1", "--format", "csv", "-o", str(earlier)),
    )
    for code, out, err in results:
        assert (code, out) == (2, ""), err
        assert err.startswith(f"error: database postgresql+asyncpg://u:***@127.0.0.1:{port}/db ")
        assert "unavailable while" in err and err.count("\n") == 1, err
        assert "secretpw" not in err and "Traceback" not in err
    assert earlier.read_text() == "an export made earlier\n"  # not truncated


@pytest.mark.real
async def test_a_postgresql_that_refuses_the_reader_is_one_sentence_without_its_password(
    real: Bus, postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong password, a database that does not exist, one no Master has made the
    schema in: one sentence and exit 2, not SQLAlchemy's 200-line traceback."""
    redis, settings = real
    await add_account(redis, settings)
    empty = f"empty{os.getpid()}"
    port = postgres_server.port
    cases = (
        (
            f"postgresql+asyncpg://hiscrm:wrong-pw@127.0.0.1:{port}/{empty}",
            f"error: database postgresql+asyncpg://hiscrm:***@127.0.0.1:{port}/{empty} "
            "unavailable while",
            'password authentication failed for user "hiscrm"',
        ),
        (
            postgres_server.url("no_such_database"),
            f"error: database postgresql+asyncpg://hiscrm:***@127.0.0.1:{port}/no_such_database "
            "unavailable while",
            'database "no_such_database" does not exist',
        ),
        (
            postgres_server.create_database(empty),
            f"error: the database postgresql+asyncpg://hiscrm:***@127.0.0.1:{port}/{empty} "
            "refused: relation",
            "does not exist (no hiscrm schema there yet: has a Master started with this "
            "HISCRM_DATABASE_URL?)",
        ),
    )
    try:
        for url, start, reason in cases:
            monkeypatch.setenv("HISCRM_DATABASE_URL", url)
            for code, out, err in await each(
                settings,
                ("data", "acc-1"),
                ("data", "acc-1", "--json"),
                ("data", "export", "acc-1", "--format", "csv"),
            ):
                assert (code, out) == (2, ""), err
                assert err.startswith(start) and reason in err, err
                assert err.count("\n") == 1 and "Traceback" not in err, err
                for secret in ("wrong-pw", postgres_server.password):
                    assert secret not in err and quote(secret, safe="") not in err
    finally:
        postgres_server.drop_database(empty)


async def test_the_last_crawl_is_the_workers_report_even_when_it_found_nothing(real: Bus) -> None:
    redis, settings = real
    keys = settings.keys
    await add_account(redis, settings)
    await store(os.environ["HISCRM_DATABASE_URL"])  # a Master ran: the database exists
    code, out, err = await hiscrm(settings, "data", "acc-1")
    assert code == 0, err  # an account with nothing crawled yet is not an error
    assert "0 comments on 0 works, 0 DMs in 0 conversations stored; 0 crawl batches" in out
    assert "last crawl unknown: worker w1 is not alive (last batch stored never)" in out

    # three crawls that found nothing: no batch was sent, the heartbeat says so
    registry = WorkerRegistry(redis, keys)
    report = TaskReport(applied_version=1, state="running", crawls=3, last_crawl_at=CRAWLED)
    await registry.heartbeat(WorkerInfo(id="w1", tasks={}), ttl_s=60)
    code, out, err = await hiscrm(settings, "data", "acc-1")
    assert "last crawl unknown: worker w1 reports no task for this account yet" in out
    await registry.heartbeat(WorkerInfo(id="w1", tasks={"acc-1": report}), ttl_s=60)
    (code, out, err), (_c, js, _e) = await each(
        settings, ("data", "acc-1"), ("data", "acc-1", "--json")
    )
    assert code == 0, err
    assert (
        "last crawl 2026-03-04T05:06:07+00:00 on worker w1: 3 crawl(s), 0 item(s) found "
        "since the task started; task running"
    ) in out
    doc = json.loads(js)
    assert doc["last_crawl_at"] == "2026-03-04T05:06:07+00:00"
    assert doc["last_batch_at"] is None
    assert (doc["worker"], doc["worker_alive"]) == ("w1", True)
    assert doc["task"]["crawls"] == 3 and doc["task"]["items"] == 0

    # a crawl that failed: its error is shown with the time of the last one that worked
    error = "crawl failed: TimeoutError: page did not load"
    failing = report.model_copy(update={"state": "error", "error": error, "items": 4})
    failing = failing.model_copy(update={"items_left": 7})
    await registry.heartbeat(WorkerInfo(id="w1", tasks={"acc-1": failing}), ttl_s=60)
    (code, out, err), (_c, js, _e) = await each(
        settings, ("data", "acc-1"), ("data", "acc-1", "--json")
    )
    assert code == 0, err
    assert "3 crawl(s), 4 item(s) found since the task started, 7 left uncrawled" in out
    assert f"; task error: {error}" in out
    assert json.loads(js)["task"]["error"] == error


async def test_data_kept_on_removal_is_shown_as_such(real: Bus) -> None:
    redis, settings = real
    await add_account(redis, settings)
    await store(os.environ["HISCRM_DATABASE_URL"], batch(*COMMENTS[:2]))
    code, _out, err = await hiscrm(settings, "account", "remove", "acc-1", "--keep-data")
    assert code == 0, err
    (code, out, err), (_c, js, _e) = await each(
        settings, ("data", "acc-1"), ("data", "acc-1", "--json")
    )
    assert code == 0, err
    assert "no account 'acc-1': this is the crawled data kept on removal" in out
    assert "2 comments on 1 works, 0 DMs in 0 conversations stored; 1 crawl batches" in out
    assert "last crawl unknown: no worker runs this account" in out
    doc = json.loads(js)
    assert doc["account_exists"] is False and doc["comments"] == 2
    assert [i["item_id"] for i in doc["items"]] == ["c2", "c1"]


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


async def test_export_writes_every_match_as_csv_or_json_lines(
    real: Bus, db: str, tmp_path: Path
) -> None:
    redis, settings = real
    await add_account(redis, settings)
    # more than a page of the export: all of them, oldest first
    many = tuple(
        comment(f"m{n}", f"burst {n}", timedelta(days=20, seconds=-n), "fan", "u-fan", "v-9")
        for n in range(1, 1201)
    )
    await store(db, batch(*many), batch(*COMMENTS, *DMS))
    out_file = tmp_path / "exports" / "acc-1.csv"
    out_file.parent.mkdir()
    (
        (code, as_csv, err),
        (code_j, as_jsonl, err_j),
        (code_d, dms_csv, err_d),
        (code_g, grepped, err_g),
        (code_o, said, err_o),
    ) = await each(
        settings,
        ("data", "export", "acc-1", "--format", "csv"),
        ("data", "export", "acc-1"),
        ("data", "export", "acc-1", "--format", "csv", "--kind", "dms"),
        ("data", "export", "acc-1", "--format", "jsonl", "--grep", "GREAT", "--work", "v-100"),
        ("data", "export", "acc-1", "--format", "csv", "-o", str(out_file)),
    )
    assert (code, code_j, code_d, code_g, code_o) == (0, 0, 0, 0, 0), err + err_j + err_d + err_g
    assert err_o == ""

    header, *rows = read_csv(as_csv)
    assert header == ["item_id", "created_at", "author", "text", "work_id", "parent_id", "user_id"]
    assert len(rows) == 1204
    assert [r[0] for r in rows[:2]] == ["m1", "m2"] and rows[1199][0] == "m1200"
    c1, c2, c3, c4 = rows[1200:]
    assert c4 == [
        "c4",
        COMMENTS[3].created_at.isoformat(),
        "小明",
        AWKWARD,
        "v-200",
        "c3",
        "u-ming",
    ]
    when = COMMENTS[0].created_at.isoformat()
    assert c1 == ["c1", when, "小明", "第一条评论：很好看", "v-100", "", "u-ming"]
    assert (c2[3], c3[3]) == ("Great VIDEO, 100% love it", "great job")

    lines = as_jsonl.splitlines()
    assert len(lines) == 1204
    assert [CrawledItem.model_validate_json(line) for line in lines] == [*many, *COMMENTS]

    header, *rows = read_csv(dms_csv)
    assert header == [
        "item_id",
        "created_at",
        "author",
        "text",
        "conversation_id",
        "sender_id",
        "direction",
    ]
    assert rows == [
        ["d1", DMS[0].created_at.isoformat(), "小明", "你好，请问价格", "conv-1", "u-ming", "in"],
        ["d2", DMS[1].created_at.isoformat(), "me", "hello there", "conv-2", "u-me", "out"],
    ]

    assert [CrawledItem.model_validate_json(line) for line in grepped.splitlines()] == [COMMENTS[1]]

    assert said.strip() == f"1204 comments of acc-1 written to {out_file}"
    assert out_file.read_bytes() == as_csv.encode()

    nowhere = tmp_path / "no such directory" / "acc-1.csv"
    code, out, err = await hiscrm(settings, "data", "export", "acc-1", "-o", str(nowhere))
    assert (code, out) == (2, "")
    assert err == f"error: cannot write {nowhere}: No such file or directory\n"


async def test_crawled_text_is_shown_as_text_and_exported_as_it_was(real: Bus) -> None:
    """Markup and escape sequences a fan wrote are shown escaped in the table; --json
    and the export keep them exactly (JSON escaping what a terminal acts on)."""
    redis, settings = real
    await add_account(redis, settings)
    hostile = CrawledItem(
        kind="comment",
        item_id="c[/]1",
        text=TEXT,
        author=AUTHOR,
        created_at=NOW,
        extra={"work_id": "[red]v\x1b[2J", "user_id": "u1"},
    )
    await store(os.environ["HISCRM_DATABASE_URL"], batch(hostile))
    (code, out, err), (_c, js, _e), (_c2, jsonl, _e2), (_c3, as_csv, _e3) = await each(
        settings,
        ("data", "acc-1"),
        ("data", "acc-1", "--json"),
        ("data", "export", "acc-1"),
        ("data", "export", "acc-1", "--format", "csv"),
    )
    assert code == 0, err
    assert "Traceback" not in err and unsafe_chars(out + err) == []
    assert "c[/]1" in out and "[red]v\\x1b[2J" in out
    assert "[/] [link=http://x]click[/link] \\x1b[2J \\x1b]8;;http://evil\\x07x" in out
    assert "[bold]fan[/] \\x1b[31m\\u202e" in out

    assert unsafe_chars(js) == [] and unsafe_chars(jsonl) == []
    (item,) = json.loads(js)["items"]
    assert CrawledItem.model_validate(item) == hostile
    assert [CrawledItem.model_validate_json(line) for line in jsonl.splitlines()] == [hostile]
    assert read_csv(as_csv)[1][:4] == ["c[/]1", NOW.isoformat(), AUTHOR, TEXT]  # data, as is


async def on_a_terminal(settings: BusSettings, *args: str) -> Result:
    """(exit code, stdout, stderr) of ``hiscrm ARGS`` with its stdout on a terminal (a
    pty), as an operator runs it; the output as the program wrote it (no \\r added)."""

    def run() -> Result:
        pty_out, terminal = os.openpty()
        attrs = termios.tcgetattr(terminal)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(terminal, termios.TCSANOW, attrs)
        env = cli_env(settings)
        with subprocess.Popen(
            [sys.executable, "-m", "hiscrm_cli", *args],
            env=env,
            stdout=terminal,
            stderr=subprocess.PIPE,
        ) as process:
            os.close(terminal)
            chunks = []
            try:
                while chunk := os.read(pty_out, 65536):
                    chunks.append(chunk)
            except OSError:  # EIO: every end of the terminal closed
                pass
            finally:
                os.close(pty_out)
            assert process.stderr is not None
            err = process.stderr.read()
            code = process.wait(60)
        return code, b"".join(chunks).decode(), err.decode()

    return await anyio.to_thread.run_sync(run)


async def test_csv_on_a_terminal_is_escaped_and_a_formula_is_text(
    real: Bus, tmp_path: Path
) -> None:
    """CSV is written raw to a file or a pipe, but on a terminal what it would act on
    (escape sequences) is shown escaped; and a cell a spreadsheet would run as a
    formula gets a ' in front, in every CSV."""
    redis, settings = real
    await add_account(redis, settings)
    hostile = CrawledItem(
        kind="comment",
        item_id="-2+3",
        text=TEXT,
        author='=HYPERLINK("http://evil","click")',
        created_at=NOW,
        extra={"work_id": "+cmd|' /C calc'!A0", "user_id": "@SUM(A1)", "parent_id": "ok=1"},
    )
    await store(os.environ["HISCRM_DATABASE_URL"], batch(hostile))
    out_file = tmp_path / "acc-1.csv"
    (code, shown, err), (code_f, said, err_f) = [
        await on_a_terminal(settings, "data", "export", "acc-1", "--format", "csv"),
        await on_a_terminal(
            settings, "data", "export", "acc-1", "--format", "csv", "-o", str(out_file)
        ),
    ]
    code_p, piped, err_p = await hiscrm(settings, "data", "export", "acc-1", "--format", "csv")
    assert (code, code_f, code_p) == (0, 0, 0), err + err_f + err_p

    assert unsafe_chars(shown.replace("\r\n", "\n")) == []  # how CSV ends its rows
    (_header, on_terminal) = read_csv(shown)
    assert on_terminal[3] == (
        "[/] [link=http://x]click[/link] \\x1b[2J \\x1b]8;;http://evil\\x07x\\x1b]8;;\\x07 "
        "\\x9b31m \\u202eevil"
    )
    formulas_as_text = [
        "'-2+3",
        NOW.isoformat(),
        '\'=HYPERLINK("http://evil","click")',
        TEXT,
        "'+cmd|' /C calc'!A0",
        "ok=1",
        "'@SUM(A1)",
    ]
    assert on_terminal[:3] + on_terminal[4:] == formulas_as_text[:3] + formulas_as_text[4:]

    # to a file or a pipe: the crawled text byte for byte, formulas made text
    assert f"written to {out_file}" in said  # (rich makes the numbers bold on a terminal)
    assert out_file.read_bytes() == piped.encode()
    assert read_csv(piped)[1] == formulas_as_text
