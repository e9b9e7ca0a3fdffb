"""The ``hiscrm`` command."""

from __future__ import annotations

from typing import Annotated

import typer

from . import account, acl, data, diagnose, health, login, sandbox, services, session, up, web
from .common import setup_logging

app = typer.Typer(
    name="hiscrm",
    help="Control plane for browser-driven crawler workers with reliable config hot-update.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


SERVICES = ("master", "worker")


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
    setup_logging(log_level, log_format)


app.command()(services.master)
app.command()(services.worker)
app.command()(login.login)
app.command("diagnose")(diagnose.diagnose_command)
app.command()(health.health)
app.command()(up.up)
app.add_typer(account.app, name="account")
app.add_typer(data.app, name="data")
app.add_typer(web.app, name="web")
app.add_typer(acl.app, name="acl")
app.add_typer(session.app, name="session")
app.add_typer(sandbox.app, name="sandbox")
