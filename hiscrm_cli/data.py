"""``hiscrm data ACCOUNT``: the newest crawled comments and direct messages, how many are
kept, and the last crawl as the worker running the account reports it."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from hiscrm_master.ingest import DEFAULT_CAP, KINDS, AccountData, IngestStore

from .common import EXIT_FAILED, RedisUrl, command_settings, console, fail, redis_client, run
from .terminal import json_text, safe


def data(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    kind: Annotated[str, typer.Option(help="comments or dms.")] = "comments",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """List the newest crawled items of an account, the counts kept and the last crawl."""
    if kind not in KINDS:
        fail(f"--kind must be one of {', '.join(KINDS)}")
    settings = command_settings(redis_url)

    async def main() -> AccountData:
        async with redis_client(settings) as redis:
            return await IngestStore(redis, settings.keys).overview(account_id, kind, limit)

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
    stored, received = view.stored, view.received
    console.print(
        f"{stored['comments']} comments, {stored['dms']} DMs stored "
        f"({received.comments} comments, {received.dms} DMs received in all; "
        f"the newest {DEFAULT_CAP} of each are kept)"
    )
    console.print(_last_crawl(view), highlight=False)


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else "never"


def _last_crawl(view: AccountData) -> str:
    """One line: the last crawl as the owner's heartbeat reports it, or why it is unknown."""
    batch = f" (last batch stored {_time(view.received.last_crawl_at)})"
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
    left = getattr(task, "items_left", None)
    if left:
        line += f", {left} left uncrawled"
    line += f"; task {safe(task.state)}"
    if task.error:
        line += f": {safe(task.error)}"
    return line


def _doc(view: AccountData, kind: str) -> dict[str, Any]:
    task = view.task
    return {
        "account": view.account_id,
        "account_exists": view.exists,
        "kind": kind,
        # kept now (the newest DEFAULT_CAP of each kind)
        "comments": view.stored["comments"],
        "dms": view.stored["dms"],
        # every new item ever stored, the evicted ones included
        "received": {"comments": view.received.comments, "dms": view.received.dms},
        # the last crawl as the owner reports it (None: none reported), and when the
        # Master last stored a batch (a crawl that finds nothing sends none)
        "last_crawl_at": _iso(task.last_crawl_at) if task else None,
        "last_batch_at": _iso(view.received.last_crawl_at),
        "worker": view.worker_id,
        "worker_alive": view.worker_alive,
        "task": json.loads(task.model_dump_json()) if task else None,
        "items": [json.loads(i.model_dump_json()) for i in view.items],
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
