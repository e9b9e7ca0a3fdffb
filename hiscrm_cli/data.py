"""``hiscrm data ACCOUNT``: crawled comments and direct messages from the database,
filtered and searched; ``hiscrm data export ACCOUNT``: all of them as CSV or JSON lines.
The last crawl is the one the worker running the account reports."""

from __future__ import annotations

import csv
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from typer.core import TyperGroup

from .common import (
    EXIT_FAILED,
    RedisUrl,
    archive_of,
    command_settings,
    console,
    fail,
    redis_client,
    run,
)
from .terminal import clean, json_text, safe

if TYPE_CHECKING:
    from hiscrm_bus.messages import CrawledItem
    from hiscrm_master.archive import Filter
    from hiscrm_master.snapshot import AccountData

KINDS = {"comments": "comment", "dms": "dm"}


class _ShowByDefault(TyperGroup):
    """``hiscrm data ACCOUNT`` means ``hiscrm data show ACCOUNT``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:  # type: ignore[override]
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_ShowByDefault,
    no_args_is_help=True,
    help="Crawled comments and DMs from the database (`hiscrm data ACCOUNT` shows them).",
)

Kind = Annotated[str, typer.Option(help="comments or dms.")]
Since = Annotated[
    str | None,
    typer.Option(
        help="Created at or after: an ISO date/time (UTC unless it says) or 30m, 12h, 7d."
    ),
]
Work = Annotated[
    str | None, typer.Option(help="Of this work (comments) or conversation (dms), by id.")
]
Author = Annotated[str | None, typer.Option(help="By this author: their id or exact name.")]
Grep = Annotated[str | None, typer.Option(help="Whose text contains this, in any case.")]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# the longest --since: 100 years back (a longer one is no limit)
MAX_SINCE = timedelta(days=36_500)
# the --since dates kept in range once in UTC (year 1 at +01:00 would be year 0)
EARLIEST = datetime(2, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    if m := _DURATION.match(value):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
        if not seconds <= MAX_SINCE.total_seconds():  # inf, for a number of 309 digits
            fail(f"--since {value!r} reaches back more than 100 years (36500d): leave it out")
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        fail(f"--since {value!r} is neither an ISO date/time (2026-11-30T08:00) nor 30m/12h/7d")
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return min(max(parsed, EARLIEST), LATEST)


def _filter(
    kind: str,
    since: str | None,
    work: str | None,
    author: str | None,
    grep: str | None,
    limit: int | None,
) -> Filter:
    from hiscrm_master.archive import Filter

    if kind not in KINDS:
        fail(f"--kind must be one of {', '.join(KINDS)}")
    if grep is not None and not grep.strip():
        fail("--grep needs some text to look for")
    return Filter(
        kind=KINDS[kind],  # type: ignore[arg-type]
        since=_since(since),
        work=work,
        author=author,
        grep=grep,
        limit=limit,
    )


@app.command()
def show(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    kind: Kind = "comments",
    since: Since = None,
    work: Work = None,
    author: Author = None,
    grep: Grep = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """The newest crawled items of an account (filtered), its counts in the database,
    and its last crawl."""
    f = _filter(kind, since, work, author, grep, limit)
    settings = command_settings(redis_url)

    async def main() -> AccountData:
        from hiscrm_master.snapshot import account_data

        async with redis_client(settings) as redis, archive_of(settings) as archive:
            return await account_data(redis, settings.keys, archive, account_id, f)

    view = run(main)
    if not view.known:
        fail(f"no account {account_id!r}", EXIT_FAILED)
    if as_json:
        print(json_text(_doc(view, kind)))
        return
    # where an item belongs: its work and parent comment, its conversation
    where = ("work_id", "parent_id") if kind == "comments" else ("conversation_id",)
    heads = [k.removesuffix("_id") for k in where]
    table = Table("id", "created", "author", "text", *heads, title=f"{safe(account_id)}: {kind}")
    for item in view.items:
        created = item.created_at.strftime("%Y-%m-%d %H:%M:%S")
        ids = [safe(str(item.extra.get(k) or "")) for k in where]
        table.add_row(safe(item.item_id), created, safe(item.author), safe(item.text), *ids)
    console.print(table)
    if not view.exists:
        console.print(f"no account {safe(account_id)!r}: this is the crawled data kept on removal")
    c = view.counts
    console.print(
        f"{c.comments} comments on {c.works} works, {c.dms} DMs in {c.conversations} "
        f"conversations stored; {c.crawl_runs} crawl batches"
        + (f", {c.errors} crawl errors" if c.errors else ""),
        highlight=False,
    )
    console.print(_last_crawl(view), highlight=False)


@app.command()
def export(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    fmt: Annotated[
        str,
        typer.Option("--format", help="jsonl, or csv (a cell starting = + - @ gets a ' first)."),
    ] = "jsonl",
    kind: Kind = "comments",
    since: Since = None,
    work: Work = None,
    author: Author = None,
    grep: Grep = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Every crawled item of an account that matches, oldest first: JSON lines (each
    value exactly, the raw payload the worker sent included) or CSV.

    In CSV a cell that starts with = + - or @ gets a ' in front, so that a spreadsheet
    shows it as text instead of running it as a formula. CSV on a terminal shows
    control characters escaped (\\x1b); in a file (-o) or a pipe they stay."""
    if fmt not in ("csv", "jsonl"):
        fail("--format must be csv or jsonl")
    f = _filter(kind, since, work, author, grep, None)
    settings = command_settings(None)

    async def main() -> int:
        async with archive_of(settings) as archive:
            pages = aiter(archive.export(account_id, f))
            # the first page before the output is opened: a database that does not
            # answer leaves an earlier export in place
            first: list[CrawledItem] = await anext(pages, [])
            try:
                opened = output.open("w", newline="", encoding="utf-8") if output else _stdout()
            except OSError as exc:
                fail(f"cannot write {output}: {exc.strerror or exc}")
            with opened as out:
                terminal = output is None and sys.stdout.isatty()
                writer = _Writer(out, fmt, KINDS[kind], terminal=terminal)
                writer.write(first)
                async for page in pages:
                    writer.write(page)
            return writer.count

    count = run(main)
    if output is not None:
        console.print(f"{count} {kind} of {safe(account_id)} written to {safe(str(output))}")


class _stdout:
    def __enter__(self) -> IO[str]:
        return sys.stdout

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()


CSV_COLUMNS = {
    "comment": ("item_id", "created_at", "author", "text", "work_id", "parent_id", "user_id"),
    "dm": ("item_id", "created_at", "author", "text", "conversation_id", "sender_id", "direction"),
}


# what a spreadsheet takes for the start of a formula (=HYPERLINK(…), +cmd|…, -1+1, @SUM)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class _Writer:
    def __init__(self, out: IO[str], fmt: str, kind: str, *, terminal: bool = False) -> None:
        self.out = out
        self.fmt = fmt
        self.columns = CSV_COLUMNS[kind]
        self.terminal = terminal  # escape what a terminal would act on
        self.count = 0
        self.csv = csv.writer(out) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(self.columns)

    def write(self, items: list[CrawledItem]) -> None:
        for item in items:
            if self.csv is not None:
                cells = [_inert(_cell(item, c)) for c in self.columns]
                self.csv.writerow([clean(c) for c in cells] if self.terminal else cells)
            else:
                # what a terminal would act on escaped, every value kept (see terminal.py)
                self.out.write(json_text(item.model_dump(mode="json"), indent=None) + "\n")
            self.count += 1


def _cell(item: CrawledItem, column: str) -> str:
    if column == "created_at":
        return item.created_at.isoformat()
    value: Any = getattr(item, column, None)
    if value is None:
        value = item.extra.get(column, item.extra.get("author_id") if column == "user_id" else "")
    return "" if value is None else str(value)


def _inert(cell: str) -> str:
    """A spreadsheet shows the cell as text, not as a formula it would run."""
    return "'" + cell if cell.startswith(FORMULA_START) else cell


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "never"


def _last_crawl(view: AccountData) -> str:
    """One line: the last crawl as the owner's heartbeat reports it, or why it is unknown."""
    batch = f" (last batch stored {_time(view.counts.last_crawl_at)})"
    if view.worker_id is None:
        return "last crawl unknown: no worker runs this account" + batch
    worker = safe(view.worker_id)
    if not view.worker_alive:
        return f"last crawl unknown: worker {worker} is not alive" + batch
    task = view.task
    if task is None:
        return f"last crawl unknown: worker {worker} reports no task for this account yet" + batch
    line = (
        f"last crawl {_time(task.last_crawl_at)} on worker {worker}: "
        f"{task.crawls} crawl(s), {task.items} item(s) found since the task started"
    )
    if task.items_left:
        line += f", {task.items_left} left uncrawled"
    line += f"; task {safe(task.state)}"
    if task.error:
        line += f": {safe(task.error)}"
    return line


def _doc(view: AccountData, kind: str) -> dict[str, Any]:
    task, c = view.task, view.counts
    return {
        "account": view.account_id,
        "account_exists": view.exists,
        "kind": kind,
        # stored in the database
        "comments": c.comments,
        "dms": c.dms,
        "works": c.works,
        "conversations": c.conversations,
        "crawl_batches": c.crawl_runs,
        "crawl_errors": c.errors,
        # the last crawl as the owner reports it (None: none reported), and when the
        # newest batch was crawled (a crawl that finds nothing sends none)
        "last_crawl_at": _iso(task.last_crawl_at) if task else None,
        "last_batch_at": _iso(c.last_crawl_at),
        "worker": view.worker_id,
        "worker_alive": view.worker_alive,
        "task": json.loads(task.model_dump_json()) if task else None,
        "items": [json.loads(i.model_dump_json()) for i in view.items],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
