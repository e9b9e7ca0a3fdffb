"""The ``hiscrm`` command.

Each command's module is imported only when that command runs: importing them all (the
Master's and the web console's libraries, the sandbox site, pydantic models by the
dozen) cost ``hiscrm --help`` more than twice the start-up of Python with typer, rich,
redis and pydantic (issue 11). So the commands are named in ``COMMANDS`` with the line
``hiscrm --help`` lists for each, and ``LazyGroup`` imports a module when its command is
resolved. tests/cli/test_startup.py checks each line against its command's own help.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NamedTuple

import typer
from typer import _click  # typer vendors click; its commands are typer._click's
from typer.core import TyperCommand, TyperGroup
from typer.main import get_group


class Entry(NamedTuple):
    target: str
    """``module:attribute`` in hiscrm_cli: a command function or a ``typer.Typer``."""
    help: str
    """The first paragraph of the command's help, as ``hiscrm --help`` lists it."""


COMMANDS: dict[str, Entry] = {
    "master": Entry(
        "services:master", "Run the Master: ACKs, worker events, retries, liveness and placement."
    ),
    "worker": Entry(
        "services:worker",
        "Run a worker: one monitor task per assigned account, hot-swapped on update.",
    ),
    "login": Entry(
        "login:login",
        "Log an account in with a QR code: shows the code, follows the scan, and waits\n"
        "until the worker applied the new platform_user_id.",
    ),
    "diagnose": Entry(
        "diagnose:diagnose_command",
        "Check accounts, workers, updates and crawling; every finding names a remedy.\n"
        "Exit 0 when healthy, 1 when anything is a problem, 2 when Redis is unreachable.",
    ),
    "health": Entry(
        "health:health",
        "Exit 0 if this Master or worker is alive per Redis, 1 (with the reason) if not,\n"
        "2 if Redis is unreachable.",
    ),
    "up": Entry(
        "up:up",
        "Run the whole stack on this machine until Ctrl-C (with --demo: play the seed's\n"
        "scenario, print its timeline, and stop).",
    ),
    "account": Entry("account:app", "Manage accounts and change their configuration."),
    "data": Entry(
        "data:app",
        "Crawled comments and DMs from the database (`hiscrm data ACCOUNT` shows them).",
    ),
    "web": Entry("web:app", "The operators' web console (`hiscrm web` serves it)."),
    "acl": Entry("acl:app", "Redis users: one per worker, the Master's, operators'."),
    "session": Entry("session:app", "Browser sessions: the key workers seal them with."),
    "sandbox": Entry("sandbox:app", "The offline sandbox platform site."),
}
SERVICES = ("master", "worker")


class Listed(TyperCommand):
    """A command as ``hiscrm --help`` and shell completion list it, before its module is
    imported: its name and its help line."""


class LazyGroup(TyperGroup):
    """hiscrm's top-level group: ``get_command`` imports the module of the command it
    names (once); the help listing and the completion of command names use
    ``COMMANDS`` and import nothing."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, entry in COMMANDS.items():
            self.commands.setdefault(name, Listed(name=name, help=entry.help))
        self._listing = False

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        command = self.commands.get(cmd_name)
        if isinstance(command, Listed) and not self._listing:
            command = self.commands[cmd_name] = load(cmd_name)
        return command

    @contextmanager
    def _from_table(self) -> Iterator[None]:
        self._listing = True
        try:
            yield
        finally:
            self._listing = False

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        with self._from_table():
            super().format_help(ctx, formatter)

    def shell_complete(self, ctx: _click.Context, incomplete: str) -> list[Any]:
        with self._from_table():
            return super().shell_complete(ctx, incomplete)


def load(name: str) -> _click.Command:
    """The click command of ``COMMANDS[name]``, built as ``app.command`` /
    ``app.add_typer`` would have built it."""
    module, _, attribute = COMMANDS[name].target.partition(":")
    target = getattr(importlib.import_module(f"{__package__}.{module}"), attribute)
    holder = typer.Typer(
        rich_markup_mode=app.rich_markup_mode,
        pretty_exceptions_short=app.pretty_exceptions_short,
        suggest_commands=app.suggest_commands,
    )
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return get_group(holder).commands[name]


app = typer.Typer(
    name="hiscrm",
    cls=LazyGroup,
    help="Control plane for browser-driven crawler workers with reliable config hot-update.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    log_level: Annotated[
        str | None,
        typer.Option(
            envvar="HISCRM_LOG_LEVEL",
            help="debug, info, warning or error (default: info for services, else warning).",
        ),
    ] = None,
    log_format: Annotated[
        str, typer.Option(envvar="HISCRM_LOG_FORMAT", help="text or json.")
    ] = "text",
) -> None:
    if log_level is None:
        log_level = "info" if ctx.invoked_subcommand in SERVICES else "warning"
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter(f"{log_level!r} is not one of debug, info, warning, error")
    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"{log_format!r} is not one of text, json")
    from .common import setup_logging

    setup_logging(log_level, log_format)
