"""``hiscrm diagnose [ACCOUNT] [--json]``: why isn't my crawler running?"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hiscrm_master.diagnosis import AccountReport, Diagnosis, Finding, diagnose
from hiscrm_master.snapshot import collect

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    RedisUrl,
    archive_of,
    command_settings,
    console,
    fail,
    redis_client,
    run,
)
from .terminal import json_text, safe


def diagnose_command(
    account_id: Annotated[str | None, typer.Argument(metavar="[ACCOUNT]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Check accounts, workers, updates and crawling; every finding names a remedy.
    Exit 0 when healthy, 1 when anything is a problem, 2 when Redis is unreachable."""
    settings = command_settings(redis_url)

    async def main() -> Diagnosis:
        async with redis_client(settings) as redis, archive_of(settings) as archive:
            snap = await collect(redis, settings, account_id, archive)
        if account_id and not snap.accounts:
            fail(f"no account {account_id!r}", EXIT_FAILED)
        return diagnose(snap)

    result = run(main)
    if as_json:
        print(json_text(result.doc()))
    else:
        render(result)
    raise typer.Exit(EXIT_OK if result.healthy else EXIT_FAILED)


def _style(finding: Finding) -> str:
    return "red" if finding.severity == "problem" else "yellow"


def _details(a: AccountReport) -> None:
    """For one account: its pending and unsuccessful updates and newest items."""
    for p in a.pending_updates:
        console.print(
            f"pending update {safe(p['update_id'][:12])}: version {p['version']}, "
            f"attempt {p['attempts']}, {p['age_s']:.1f} s old",
            highlight=False,
        )
    for u in a.unsuccessful_updates:
        console.print(
            f"[red]{safe(u['status'])}[/red] update {safe(u['update_id'][:12])}: "
            f"version {u['version']} after {u['attempts']} attempt(s): {safe(u['error'])}",
            highlight=False,
        )
    for kind, items in (("comment", a.recent_comments), ("DM", a.recent_dms)):
        for item in items:
            console.print(
                f"recent {kind} {safe(item['id'])} ({item['created_at'][:19]}) "
                f"{safe(item['author'])}: {safe(item['text'])}",
                highlight=False,
            )


def render(result: Diagnosis) -> None:
    accounts = Table(
        "account",
        "worker",
        "login",
        "version",
        "task",
        "pending",
        "items",
        "last crawl",
        title="accounts",
    )
    for a in result.accounts:
        bad = any(p.severity == "problem" for p in a.problems)
        task = (a.task_state or "-") + (f": {a.task_error}" if a.task_error else "")
        applied = str(a.applied_version) if a.applied_version is not None else "-"
        config = str(a.config_version) if a.config_version is not None else "?"
        accounts.add_row(
            f"[red]{safe(a.id)}[/red]" if bad else safe(a.id),
            safe(a.worker or "-"),
            safe(f"{a.login_status or '-'} {a.platform_user_id or ''}".strip()),
            f"{applied}/{config}",
            safe(task),
            str(len(a.pending_updates)),
            "?" if a.comments is None else f"{a.comments} c, {a.dms} dm",
            (a.last_crawl_at or "never")[11:19] or "never",
        )
    console.print(accounts)
    if len(result.accounts) == 1:
        _details(result.accounts[0])
    workers = Table("worker", "alive", "heartbeat age", "accounts", title="workers")
    for w in result.workers:
        age = w["heartbeat_age_s"]
        workers.add_row(
            safe(w["id"]),
            "[green]yes[/green]" if w["alive"] else "[red]no[/red]",
            f"{age:.1f} s" if age is not None else "-",
            safe(", ".join(w["accounts"]) or "-"),
        )
    console.print(workers)
    findings = [(None, p) for p in result.problems] + [
        (a.id, p) for a in result.accounts for p in a.problems
    ]
    if not findings:
        console.print("[green]all green: no problem found[/green]")
        return
    for account, f in findings:
        where = f"{safe(account)}: " if account else ""
        console.print(
            f"[{_style(f)}]{f.severity}[/{_style(f)}] {where}{safe(f.message)}", highlight=False
        )
        console.print(f"    → {safe(f.remedy)}", highlight=False)
