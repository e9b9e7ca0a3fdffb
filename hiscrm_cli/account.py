"""``hiscrm account …``: add, list, show, remove, set (one or fleet-wide), login-success,
import and export (accounts in bulk)."""

from __future__ import annotations

import contextlib
import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError
from rich.table import Table

from hiscrm_bus import limits
from hiscrm_bus.accounts import (
    PLATFORMS,
    SECRET_FIELDS,
    AccountConfig,
    AccountStore,
    AccountUpdate,
    describe,
    from_hash,
    needs_a_login,
    parse_assignments,
    unknown_platform,
    validate,
)
from hiscrm_bus.errors import AccountExists, AccountNotFound, InvalidAccountConfig

from .common import (
    CLI_SENDER,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    RedisUrl,
    command_settings,
    console,
    err_console,
    fail,
    redis_client,
    run,
)
from .terminal import json_text, safe

if TYPE_CHECKING:
    from hiscrm_bus.messages import AccountConfigUpdate
    from hiscrm_bus.pending import Outcome

# The Master's update machinery (hiscrm_master.updates and what it pulls in: pending
# updates, streams, ACLs) is imported by the commands that use it, not here, so that
# `hiscrm account list` starts fast (issue 11)

app = typer.Typer(help="Manage accounts and change their configuration.", no_args_is_help=True)
SENDER = CLI_SENDER
Wait = Annotated[bool, typer.Option("--wait", help="Wait for the worker's outcome.")]
Timeout = Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait.")]
PLATFORM_NAMES = ", ".join(PLATFORMS)


@app.command()
def add(
    account_id: Annotated[str, typer.Argument(metavar="ID")],
    platform: Annotated[str, typer.Option(help=f"One of: {PLATFORM_NAMES}.")],
    worker: Annotated[
        str | None, typer.Option(help="Owning worker; default: the Master assigns one.")
    ] = None,
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    interval: Annotated[float | None, typer.Option(help="monitor_interval_s.")] = None,
    redis_url: RedisUrl = None,
) -> None:
    """Add an account."""
    from hiscrm_master.updates import Updates

    settings = command_settings(redis_url)
    data: dict[str, Any] = {"id": account_id, "platform": platform, "name": name}
    if worker:
        data["worker_id"] = worker
    if interval is not None:
        data["monitor_interval_s"] = interval
    try:
        config = validate(data)
    except InvalidAccountConfig as exc:
        fail(f"account not added: {exc}")

    async def main() -> None:
        async with redis_client(settings) as redis:
            updates = Updates(redis, settings, SENDER)
            try:
                created, _sent = await updates.create(config)
            except AccountExists as exc:
                fail(str(exc))
            owner = created.worker_id or "the Master will assign a worker"
            console.print(
                f"added account {safe(created.id)} ({safe(created.platform)}); "
                f"worker: {safe(owner)}"
            )

    run(main)


@app.command("list")
def list_(
    needs_login: Annotated[
        bool,
        typer.Option(
            "--needs-login",
            help="Only accounts that need a (new) login, with the command for each.",
        ),
    ] = False,
    redis_url: RedisUrl = None,
) -> None:
    """List every account."""
    settings = command_settings(redis_url)

    async def main() -> None:
        async with redis_client(settings) as redis:
            store = AccountStore(redis, settings.keys)
            ids = await store.ids()
            raws = await store.get_each(ids)
        table = Table("id", "platform", "worker", "enabled", "login", "platform_user_id", "version")
        for account_id, raw in zip(ids, raws, strict=True):
            if isinstance(raw, Exception):  # its key holds no hash: the others still show
                table.add_row(safe(account_id), "[red]unreadable[/red]", "", "", "", "", "")
                continue
            try:
                c = from_hash(raw)
            except InvalidAccountConfig:
                table.add_row(safe(account_id), "[red]invalid hash[/red]", "", "", "", "", "")
                continue
            if needs_login and not needs_a_login(c):
                continue
            version = f"{c.config_version}" + (" [red](stale)[/red]" if c.config_stale else "")
            table.add_row(
                safe(c.id),
                safe(c.platform),
                safe(c.worker_id or "-"),
                "yes" if c.enabled else "no",
                safe(c.login_status),
                safe(c.platform_user_id or "-"),
                version,
            )
        console.print(table)
        if needs_login:
            for account_id, raw in zip(ids, raws, strict=True):
                with contextlib.suppress(InvalidAccountConfig):
                    if not isinstance(raw, Exception) and needs_a_login(from_hash(raw)):
                        console.print(f"hiscrm login {safe(account_id)}", highlight=False)

    run(main)


@app.command()
def show(
    account_id: Annotated[str, typer.Argument(metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    with_secrets: Annotated[
        bool, typer.Option("--with-secrets", help="Show proxy, which may hold credentials.")
    ] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Show one account: its config, its pending updates and its task on the worker.
    A field that may hold credentials (proxy) shows as "set" unless --with-secrets."""
    from hiscrm_bus.workers import WorkerRegistry
    from hiscrm_master.updates import Updates

    settings = command_settings(redis_url)

    def visible(name: str, value: Any) -> Any:
        hidden = name in SECRET_FIELDS and value is not None and not with_secrets
        return "set" if hidden else value

    async def main() -> None:
        async with redis_client(settings) as redis:
            updates = Updates(redis, settings, SENDER)
            try:
                config = await updates.store.get(account_id)
            except InvalidAccountConfig as exc:
                raw: dict[Any, Any] = await redis.hgetall(settings.keys.account(account_id))
                for k, v in sorted(raw.items()):
                    name, value = k.decode(errors="replace"), v.decode(errors="replace")
                    console.print(f"  {safe(name)} = {safe(visible(name, value))}", highlight=False)
                fail(f"the stored config of {account_id} is invalid: {exc}", EXIT_FAILED)
            pending = await updates.tracker.of_account(account_id)
            worker = (
                await WorkerRegistry(redis, settings.keys).get(config.worker_id)
                if config.worker_id
                else None
            )
        task = worker.tasks.get(account_id) if worker else None
        doc: dict[str, Any] = {
            "config": {k: visible(k, v) for k, v in config.model_dump(mode="json").items()},
            "worker_alive": worker is not None,
            "task": task.model_dump(mode="json") if task else None,
            "pending_updates": [
                {"update_id": p.update_id, "version": p.version, "attempts": p.attempts}
                for p in pending
            ],
        }
        if as_json:
            print(json_text(doc))
            return
        table = Table("field", "value", show_header=False)
        for name, value in doc["config"].items():
            shown = json.dumps(value, ensure_ascii=False) if value is not None else "-"
            table.add_row(safe(name), safe(shown))
        table.add_row("worker alive", "yes" if worker else "[red]no[/red]")
        if task:
            table.add_row(
                "task",
                safe(
                    f"{task.state} (applied version {task.applied_version})"
                    + (f": {task.error}" if task.error else "")
                ),
            )
        table.add_row("pending updates", ", ".join(f"v{p.version}" for p in pending) or "none")
        console.print(table)

    run(main)


@app.command()
def remove(
    account_id: Annotated[str, typer.Argument(metavar="ID")],
    keep_data: Annotated[
        bool, typer.Option("--keep-data", help="Keep its crawled comments and DMs.")
    ] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Remove an account and everything of it; its worker stops the task."""
    from hiscrm_master.updates import Updates

    settings = command_settings(redis_url)

    async def main() -> None:
        async with redis_client(settings) as redis:
            done = await Updates(redis, settings, SENDER).remove(account_id, keep_data=keep_data)
        data = (
            "crawled data kept"
            if done.data_kept
            else "its crawled data is being deleted from the database by the Master"
        )
        console.print(f"removed account {safe(account_id)} ({data})")

    run(main)


@app.command("set")
def set_(
    args: Annotated[
        list[str], typer.Argument(metavar="[ID] FIELD=VALUE...", help="Account id, then changes.")
    ],
    all_: Annotated[bool, typer.Option("--all", help="Every account.")] = False,
    platform: Annotated[
        str | None, typer.Option(help=f"Every account of a platform ({PLATFORM_NAMES}).")
    ] = None,
    worker: Annotated[str | None, typer.Option(help="Every account of a worker.")] = None,
    wait: Wait = False,
    timeout: Timeout = 30.0,
    redis_url: RedisUrl = None,
) -> None:
    """Change fields of one account, or of a selection (--all, --platform, --worker)."""
    from hiscrm_master.updates import Updates, check_batch

    settings = command_settings(redis_url)
    account_id = args[0] if args and "=" not in args[0] else None
    pairs = args[1:] if account_id else args
    selectors = sum([all_, platform is not None, worker is not None, account_id is not None])
    if selectors != 1:
        fail("name one account ID, or exactly one of --all, --platform, --worker")
    if not pairs:
        fail("nothing to set: give FIELD=VALUE pairs")
    if platform is not None and platform not in PLATFORMS:
        fail(f"--platform {unknown_platform(platform)}")
    try:
        changes = parse_assignments(pairs)
    except InvalidAccountConfig as exc:
        fail(str(exc))

    async def main() -> int:
        async with redis_client(settings) as redis:
            updates = Updates(redis, settings, SENDER)
            try:
                batch = await updates.selection(
                    changes, account_id=account_id, worker=worker, platform=platform
                )
            except AccountNotFound as exc:
                fail(str(exc), EXIT_FAILED)
            except InvalidAccountConfig as exc:
                fail(f"nothing written: {exc}", EXIT_FAILED)
            if not batch:
                fail("no account matches", EXIT_FAILED)
            # refuse the whole command if the change is invalid for any account
            try:
                check_batch(batch)
            except InvalidAccountConfig as exc:
                fail(f"nothing written: {exc}")
            after = await updates.tracker.last_outcome_id()
            started = time.monotonic()
            results, sent = await updates.change_many(batch, "admin_update")
            errors = [r for r in results if isinstance(r, Exception)]
            for error in errors:
                console.print(f"[red]not written:[/red] {safe(error)}")
            written = [r for r in results if isinstance(r, AccountUpdate)]
            if account_id and written:
                r = written[0]
                console.print(
                    f"account {safe(r.account_id)}: version {r.version}, "
                    f"worker {safe(r.worker_id or '-')}"
                )
            elif written:
                console.print(f"{len(written)} account(s) written")
            if not wait:
                return EXIT_FAILED if errors else EXIT_OK
            tracked = {m.update_id: m for m in sent if m is not None}
            accounts = [m.account_id for m in tracked.values()]
            outcomes = await updates.tracker.wait_outcomes(
                list(tracked), after, timeout, accounts=accounts
            )
            elapsed = time.monotonic() - started
            owners = {r.account_id: r.worker_id for r in written}
            return _report(tracked, outcomes, owners, elapsed, single=account_id is not None)

    code = run(main)
    raise typer.Exit(code)


def _report(
    tracked: dict[str, AccountConfigUpdate],
    outcomes: dict[str, Outcome],
    owners: dict[str, str | None],
    elapsed: float,
    *,
    single: bool,
) -> int:
    from hiscrm_master.updates import TALLY_STATUSES, tally

    if single:
        if not tracked:
            console.print("no worker owns the account: nothing to wait for")
            return EXIT_TIMEOUT
        (update_id,) = tracked
        outcome = outcomes.get(update_id)
        if outcome is None:
            console.print(f"timed out after {elapsed:.1f}s waiting for the worker's ACK")
            return EXIT_TIMEOUT
        console.print(
            f"{safe(outcome.status)}: version {outcome.version} by worker "
            f"{safe(outcome.worker_id)} in {outcome.latency_ms:.1f} ms "
            f"(attempts {outcome.attempts})" + (f": {safe(outcome.error)}" if outcome.error else "")
        )
        return EXIT_OK if outcome.status == "applied" else EXIT_FAILED
    counts = tally(tracked, outcomes, owners)
    table = Table("worker", *TALLY_STATUSES)
    for worker, row in counts.rows():
        table.add_row(safe(worker), *(str(n) for n in row))
    console.print(table)
    console.print(
        f"{counts.outcomes}/{counts.tracked} outcomes; last ACK after {counts.last_ack_ms:.1f} ms"
    )
    if not counts.complete:
        return EXIT_TIMEOUT
    return EXIT_OK if counts.all_applied else EXIT_FAILED


@app.command("login-success")
def login_success(
    account_id: Annotated[str, typer.Argument(metavar="ID")],
    platform_user_id: Annotated[str, typer.Option(help="The platform's user id.")],
    user_info: Annotated[str, typer.Option(help="Profile as a JSON object.")] = "{}",
    wait: Wait = False,
    timeout: Timeout = 30.0,
    redis_url: RedisUrl = None,
) -> None:
    """Inject a login success as a worker would send it (no browser needed)."""
    from hiscrm_bus.messages import LoginSuccess
    from hiscrm_master.login import on_login_success
    from hiscrm_master.updates import Updates

    settings = command_settings(redis_url)
    try:
        info = limits.loads(user_info)
    except ValueError as exc:
        fail(f"--user-info is not usable: {exc}")
    if not isinstance(info, dict):
        fail("--user-info must be a JSON object")
    try:
        event = LoginSuccess(
            sender=SENDER,
            account_id=account_id,
            worker_id=SENDER,
            platform_user_id=platform_user_id,
            user_info=info,
        )
    except ValidationError as exc:
        fail(f"not a valid login success: {describe(exc)}")

    async def main() -> int:
        async with redis_client(settings) as redis:
            updates = Updates(redis, settings, SENDER)
            before = await updates.store.get(account_id)
            after = await updates.tracker.last_outcome_id()
            # the operator is trusted: the write the Master makes for a worker's login
            if not await on_login_success(updates, event):
                fail(f"login success for {account_id} refused (see the log)", EXIT_FAILED)
            console.print(f"login success for {safe(account_id)} sent to the Master")
            if not wait:
                return EXIT_OK
            found = await updates.tracker.wait_account_outcome(
                account_id, before.config_version, after, timeout
            )
            if found is None:
                console.print("timed out waiting for the config update's outcome")
                return EXIT_TIMEOUT
            console.print(
                f"{safe(found.status)}: version {found.version} by worker "
                f"{safe(found.worker_id)} in {found.latency_ms:.1f} ms"
            )
            return EXIT_OK if found.status == "applied" else EXIT_FAILED

    raise typer.Exit(run(main))


Format = Annotated[
    str | None,
    typer.Option(
        "--format", help="csv or jsonl (default: by the file's extension, else csv).", metavar="F"
    ),
]


@app.command("import")
def import_(
    file: Annotated[
        str,
        typer.Argument(
            metavar="FILE", help="CSV with a header, or JSON lines; - reads standard input."
        ),
    ],
    fmt: Format = None,
    wait: Wait = False,
    timeout: Timeout = 30.0,
    redis_url: RedisUrl = None,
) -> None:
    """Add and update many accounts from a file (columns: id, platform, worker, name,
    interval, any settable field). Every row is checked first: one bad row and nothing
    is written."""
    from hiscrm_master.updates import Updates

    from . import bulk

    settings = command_settings(redis_url)
    try:
        text = bulk.read_source(file)
        rows, problems = bulk.parse(text, bulk.format_of(file, fmt, text))
    except ValueError as exc:
        fail(str(exc))

    async def main() -> int:
        async with redis_client(settings) as redis:
            updates = Updates(redis, settings, SENDER)
            plan = await updates.store.plan_import(rows)
            bad = sorted([*problems, *plan.problems], key=lambda p: p.line)
            if bad:
                for problem in bad:
                    err_console.print(safe(problem), highlight=False)
                fail(f"nothing imported: {len(bad)} bad row(s)")
            after = await updates.tracker.last_outcome_id()
            started = time.monotonic()
            done = await updates.import_accounts(plan)
            for error in done.raced:
                console.print(f"[red]not written (changed meanwhile):[/red] {safe(error)}")
            console.print(
                f"added {len(done.added)}, updated {len(done.updated)}, unchanged {done.unchanged}"
            )
            code = EXIT_FAILED if done.raced else EXIT_OK
            if not wait:
                return code
            tracked = {m.update_id: m for m in done.sent}
            accounts = [m.account_id for m in tracked.values()]
            outcomes = await updates.tracker.wait_outcomes(
                list(tracked), after, timeout, accounts=accounts
            )
            elapsed = time.monotonic() - started
            waited = _report(tracked, outcomes, done.owners(), elapsed, single=False)
            return waited if waited != EXIT_OK else code

    raise typer.Exit(run(main))


@app.command()
def export(
    file: Annotated[
        str | None, typer.Argument(metavar="[FILE]", help="Default: standard output.")
    ] = None,
    fmt: Format = None,
    platform: Annotated[
        str | None, typer.Option(help=f"Only the accounts of a platform ({PLATFORM_NAMES}).")
    ] = None,
    worker: Annotated[str | None, typer.Option(help="Only the accounts of a worker.")] = None,
    with_secrets: Annotated[
        bool, typer.Option("--with-secrets", help="Include proxy, which may hold credentials.")
    ] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Write every account (or those of --platform, --worker) as a file that import
    takes back."""
    from . import bulk

    settings = command_settings(redis_url)
    if platform is not None and platform not in PLATFORMS:
        fail(f"--platform {unknown_platform(platform)}")
    try:
        out_format = bulk.format_of(file, fmt)
    except ValueError as exc:
        fail(str(exc))

    async def main() -> tuple[list[AccountConfig], dict[str, str]]:
        async with redis_client(settings) as redis:
            store = AccountStore(redis, settings.keys)
            return await store.configs(platform=platform, worker=worker)

    configs, unusable = run(main)
    for account_id, reason in unusable.items():
        err_console.print(f"[red]not exported:[/red] {safe(account_id)}: {safe(reason)}")
    try:
        bulk.export(configs, out_format, file, with_secrets=with_secrets)
    except OSError as exc:
        fail(f"cannot write {file}: {exc.strerror or exc}")
    if file not in (None, "-"):
        err_console.print(f"{len(configs)} account(s) exported to {safe(file)}", highlight=False)
    if not with_secrets:
        having = sum(1 for c in configs if c.proxy)
        err_console.print(
            f"note: proxy left out (it may hold credentials; {having} account(s) have one); "
            "--with-secrets exports it",
            highlight=False,
        )
    raise typer.Exit(EXIT_FAILED if unusable else EXIT_OK)
