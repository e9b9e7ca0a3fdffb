"""``hiscrm data ACCOUNT``: the newest crawled comments and direct messages."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from hiscrm_master.ingest import KINDS, IngestStore

from .common import RedisUrl, command_settings, console, fail, redis_client, run
from .terminal import json_text, safe


def data(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    kind: Annotated[str, typer.Option(help="comments or dms.")] = "comments",
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """List the newest crawled items of an account."""
    if kind not in KINDS:
        fail(f"--kind must be one of {', '.join(KINDS)}")
    settings = command_settings(redis_url)

    async def main() -> None:
        async with redis_client(settings) as redis:
            store = IngestStore(redis, settings.keys)
            items = await store.newest(account_id, kind, limit)
            stats = await store.stats(account_id)
        if as_json:
            doc = {
                "account": account_id,
                "kind": kind,
                "comments": stats.comments,
                "dms": stats.dms,
                "last_crawl_at": stats.last_crawl_at.isoformat() if stats.last_crawl_at else None,
                "items": [json.loads(i.model_dump_json()) for i in items],
            }
            print(json_text(doc))
            return
        table = Table("id", "created", "author", "text", title=f"{safe(account_id)}: {kind}")
        for item in items:
            created = item.created_at.strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(safe(item.item_id), created, safe(item.author), safe(item.text))
        console.print(table)
        last = stats.last_crawl_at.isoformat(timespec="seconds") if stats.last_crawl_at else "never"
        console.print(f"{stats.comments} comments, {stats.dms} DMs stored; last crawl {last}")

    run(main)
