"""What a platform, a fan, a worker or Redis wrote reaches the operator's terminal as
plain text: markup shown as typed, escape sequences and bidi controls made visible and
inert; ``--json`` keeps every value as it was."""

from __future__ import annotations

import io
import json
import logging
import os
import time
import unicodedata
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import TaskReport, WorkerInfo, WorkerRegistry
from hiscrm_cli.common import setup_logging
from hiscrm_cli.terminal import BIDI, clean, json_text, safe
from hiscrm_master.archive import Archive, Arrival
from tests.cli.process import hiscrm

Bus = tuple[Redis, BusSettings]
OSC8 = "\x1b]8;;http://evil\x07x\x1b]8;;\x07"
TEXT = f"[/] [link=http://x]click[/link] \x1b[2J {OSC8} \x9b31m \u202eevil"
AUTHOR = "[bold]fan[/] \x1b[31m\u202e"
ERROR = "session [/red] gone \x1b]0;pwned\x07\u2066"


def unsafe_chars(text: str) -> list[str]:
    """Characters a terminal would act on: controls other than the newlines the
    output is made of, lone surrogates, bidi controls, line separators."""
    return [
        c
        for c in text
        if (unicodedata.category(c) in ("Cc", "Cs") and c != "\n")
        or c in BIDI
        or c in "\u2028\u2029"
    ]


def render(markup: str) -> str:
    console = Console(file=io.StringIO(), width=100, color_system=None, emoji=False)
    table = Table("cell")
    table.add_row(markup)
    console.print(markup)
    console.print(table)
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


# --- the helper ---------------------------------------------------------------


@given(st.text())
def test_clean_text_has_no_control_character_and_markup_shows_as_typed(text: str) -> None:
    cleaned = clean(text)
    assert unsafe_chars(cleaned) == [] and "\n" not in cleaned
    # embedded in markup, followed by a real tag: the markup around it still works
    shown = Text.from_markup(f"[red]{safe(text)}[/red]x", emoji=False)
    assert shown.plain == cleaned + "x"
    assert unsafe_chars(render(safe(text))) == []


@given(st.text(st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs"))))
def test_printable_text_is_left_as_it_is(text: str) -> None:
    assert clean(text) == text
    assert json_text({"t": text}) == json.dumps({"t": text}, ensure_ascii=False, indent=2)


@given(st.recursive(st.text() | st.integers() | st.none(), lambda c: st.lists(c, max_size=3)))
def test_json_keeps_every_value_and_escapes_what_a_terminal_acts_on(value: Any) -> None:
    doc = {"value": value, "text": TEXT}
    out = json_text(doc)
    assert json.loads(out) == doc
    assert unsafe_chars(out) == []


def test_hostile_text_is_shown_escaped() -> None:
    assert clean(TEXT) == (
        "[/] [link=http://x]click[/link] \\x1b[2J "
        "\\x1b]8;;http://evil\\x07x\\x1b]8;;\\x07 \\x9b31m \\u202eevil"
    )
    out = render(safe(TEXT))
    assert "[/] [link=http://x]click[/link]" in out and "\\x1b]8;;http://evil" in out
    assert clean("a\nb\tc\r") == "a\\nb\\tc\\r"


def log_lines(fmt: str, message: str, *args: object, error: str | None = None) -> str:
    """What ``hiscrm master``/``worker`` write to stderr for one record (their own
    logging set-up, in ``fmt``), with ``error`` raised and logged as its traceback."""
    stream = io.StringIO()
    root = logging.getLogger()
    before, level = root.handlers[:], root.level
    setup_logging("INFO", fmt)
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    try:
        if error is None:
            logging.getLogger("hiscrm_worker.task").error(message, *args)
        else:
            try:
                raise RuntimeError(error)
            except RuntimeError:
                logging.getLogger("hiscrm_worker.task").exception(message, *args)
    finally:
        root.handlers[:] = before
        root.setLevel(level)
    return stream.getvalue()


def test_what_a_platform_wrote_reaches_the_process_log_inert() -> None:
    # a task's error quoting the platform's status text, as the worker logs it
    out = log_lines("text", "account %s: %s", "acc-1", f"platform_error: {TEXT}\nFORGED line")
    assert unsafe_chars(out.rstrip("\n")) == [] and out.count("\n") == 1
    assert "\\x1b[2J" in out and "\\u202eevil" in out and "\\nFORGED line" in out
    # in a traceback: its own lines kept, each inert
    out = log_lines("text", "task of %s failed", "acc-1", error=f"status {TEXT}")
    assert [c for c in unsafe_chars(out) if c != "\n"] == []
    assert "Traceback (most recent call last):" in out and "RuntimeError: status [/]" in out
    # one JSON object a line: every value kept, what a terminal acts on escaped
    out = log_lines("json", "account %s: %s", "acc-1", TEXT, error=TEXT)
    doc = json.loads(out)
    assert doc["msg"] == f"account acc-1: {TEXT}" and doc["exc"].endswith(f"RuntimeError: {TEXT}")
    assert unsafe_chars(out.rstrip("\n")) == []


# --- through the CLI, on a real redis-server --------------------------------


async def hostile_fleet(redis: Redis, settings: BusSettings) -> None:
    """An account whose comment, DM, task and update outcome carry hostile text."""
    keys = settings.keys
    await AccountStore(redis, keys).create(
        AccountConfig(
            id="acc-1",
            platform="sandbox",
            name=AUTHOR,
            worker_id="w1",
            platform_user_id="[/]u\x1b[5m",
            user_info={"nickname": TEXT},
        )
    )
    now = datetime.now(UTC)
    items = (
        CrawledItem(kind="comment", item_id="c[/]1", text=TEXT, author=AUTHOR, created_at=now),
        CrawledItem(kind="dm", item_id="d1", text=TEXT, author=AUTHOR, created_at=now),
    )
    batch = CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=items)
    archive = Archive.open(os.environ["HISCRM_DATABASE_URL"])  # as the Master stores it
    try:
        await archive.store([Arrival(batch, int(time.time() * 1000))])
    finally:
        await archive.close()
    task = TaskReport(applied_version=1, state="error", error=ERROR)
    info = WorkerInfo(id="w1", platforms=("sandbox",), tasks={"acc-1": task})
    await WorkerRegistry(redis, keys).heartbeat(info, ttl_s=60)
    outcome = {
        "update_id": "upd[/]1",
        "account_id": "acc-1",
        "worker_id": "w1",
        "version": "1",
        "status": "rejected",
        "attempts": "1",
        "latency_ms": "1.0",
        "error": ERROR,
    }
    await redis.xadd(keys.outcomes(), outcome)  # type: ignore[arg-type]


def assert_plain(out: str) -> None:
    assert "Traceback" not in out
    assert unsafe_chars(out) == [], sorted(set(unsafe_chars(out)))


async def test_data_shows_crawled_text_as_plain_text(real: Bus) -> None:
    redis, settings = real
    await hostile_fleet(redis, settings)

    for kind in ("comments", "dms"):
        code, out, err = await hiscrm(settings, "data", "acc-1", "--kind", kind)
        assert code == 0, err
        assert_plain(out + err)
        assert "[/] [link=http://x]click[/link] \\x1b[2J \\x1b]8;;http://evil\\x07x" in out
        assert "\\x9b31m \\u202eevil" in out
        assert "[bold]fan[/] \\x1b[31m\\u202e" in out
    assert "c[/]1" in (await hiscrm(settings, "data", "acc-1"))[1]

    code, out, err = await hiscrm(settings, "data", "acc-1", "--json")
    assert code == 0, err
    assert_plain(out)
    (item,) = json.loads(out)["items"]
    assert (item["item_id"], item["text"], item["author"]) == ("c[/]1", TEXT, AUTHOR)


async def test_diagnose_shows_what_others_wrote_as_plain_text(real: Bus) -> None:
    redis, settings = real
    await hostile_fleet(redis, settings)

    code, out, err = await hiscrm(settings, "diagnose", "acc-1")
    assert code == 1, err  # the task error is a problem; nothing crashed
    assert_plain(out + err)
    assert "c[/]1" in out and "[/] [link=http://x]click[/link] \\x1b[2J" in out
    assert "[bold]fan[/] \\x1b[31m\\u202e" in out
    assert "session [/red] gone \\x1b]0;pwned\\x07\\u2066" in out  # task and update error
    assert "upd[/]1" in out and "[/]u\\x1b[5m" in out
    assert "the task of acc-1 failed: session [/red] gone" in out  # the finding too

    code, out, err = await hiscrm(settings, "diagnose")
    assert code == 1, err
    assert_plain(out + err)
    assert "session [/red] gone \\x1b]0;pwned" in out

    code, out, err = await hiscrm(settings, "diagnose", "acc-1", "--json")
    assert code == 1, err
    assert_plain(out)
    (account,) = json.loads(out)["accounts"]
    assert account["recent_comments"][0]["text"] == TEXT
    assert account["recent_dms"][0]["author"] == AUTHOR
    assert account["task_error"] == ERROR
    assert account["unsuccessful_updates"][0]["error"] == ERROR


async def test_account_commands_show_stored_values_as_plain_text(real: Bus) -> None:
    redis, settings = real
    await hostile_fleet(redis, settings)

    code, out, err = await hiscrm(settings, "account", "show", "acc-1")
    assert code == 0, err
    assert_plain(out + err)
    assert "[bold]fan[/]" in out and "[/] [link=http://x]click[/link]" in out
    assert "session [/red] gone" in out

    code, out, err = await hiscrm(settings, "account", "list")
    assert code == 0, err
    assert_plain(out + err)
    assert "[/]u\\x1b[5m" in out

    code, out, err = await hiscrm(settings, "account", "show", "acc-1", "--json")
    assert code == 0, err
    assert_plain(out)
    doc = json.loads(out)
    assert doc["config"]["user_info"] == {"nickname": TEXT}
    assert doc["config"]["name"] == AUTHOR


async def test_an_error_naming_what_the_operator_typed_is_plain_text(real: Bus) -> None:
    _redis, settings = real
    code, out, err = await hiscrm(settings, "diagnose", "[/]\x1b[2J\u202e")
    assert code == 1
    assert_plain(out + err)
    assert "error:" in err and "[/]\\x1b[2J\\u202e" in err
