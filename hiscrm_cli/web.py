"""``hiscrm web``: the operators' console; ``hiscrm web adduser`` / ``deluser``: its users."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import Annotated

import typer

from .common import EXIT_FAILED, RedisUrl, build, console, fail, redis_client, run
from .terminal import safe

app = typer.Typer(
    no_args_is_help=False,
    invoke_without_command=True,
    help="The operators' web console (`hiscrm web` serves it).",
)


@app.callback()
def web(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(envvar="HISCRM_WEB_HOST", help="Address to listen on.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(envvar="HISCRM_WEB_PORT", min=0, max=65535)] = 8080,
    trusted_proxies: Annotated[
        str | None,
        typer.Option(
            envvar="HISCRM_WEB_TRUSTED_PROXIES",
            help="Addresses of reverse proxies (comma-separated) whose X-Forwarded-For "
            "names the client; without it no one's is believed.",
            show_default=False,
        ),
    ] = None,
    redis_url: RedisUrl = None,
) -> None:
    """Serve the console (loopback by default); sign in with a user from `hiscrm web adduser`."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from hiscrm_web.app import create_app
    from hiscrm_web.settings import WebSettings

    settings = build(WebSettings, redis_url=redis_url, master_id="web")

    async def reachable() -> None:
        # as every command: an unreachable Redis is one sentence and exit 2, before serving
        async with redis_client(settings):
            pass

    run(reachable)
    console.print(f"hiscrm web on http://{safe(host)}:{port}/ (Ctrl-C stops it)")
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        # the sign-in limit counts per client address: a header anyone can send (uvicorn
        # believes loopback's by default, and the console listens there) must not pick it
        proxy_headers=trusted_proxies is not None,
        forwarded_allow_ips=trusted_proxies,
        # the pages' event streams never end by themselves: a stop waits this long for them
        timeout_graceful_shutdown=2,
    )


@app.command()
def adduser(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    password_file: Annotated[
        Path | None,
        typer.Option(help="Read the password from this file (first line); else it is asked for."),
    ] = None,
    replace: Annotated[bool, typer.Option(help="Set a new password for an existing user.")] = False,
    redis_url: RedisUrl = None,
) -> None:
    """Add a console user (the password is stored as an argon2 hash); with --replace a
    new password, which ends the user's sessions."""
    from hiscrm_web.auth import Users
    from hiscrm_web.settings import WebSettings

    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, UnicodeDecodeError, IndexError) as exc:
            fail(f"cannot read a password from {safe(str(password_file))}: {exc}")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            fail("the two passwords differ")
    else:
        fail("give --password-file FILE (no terminal to ask for the password)")
    settings = build(WebSettings, redis_url=redis_url, master_id="web")

    async def main() -> bool:
        async with redis_client(settings) as redis:
            return await Users(redis, settings.keys).add(name, password, replace=replace)

    if not run(main):
        fail(f"user {safe(name)!r} exists already (--replace sets a new password)", EXIT_FAILED)
    console.print(f"user {safe(name)} {'updated' if replace else 'added'}")


@app.command()
def deluser(
    name: Annotated[str, typer.Argument(metavar="NAME")],
    redis_url: RedisUrl = None,
) -> None:
    """Remove a console user; its sessions end at once."""
    from hiscrm_web.auth import Users
    from hiscrm_web.settings import WebSettings

    settings = build(WebSettings, redis_url=redis_url, master_id="web")

    async def main() -> bool:
        async with redis_client(settings) as redis:
            return await Users(redis, settings.keys).remove(name)

    if not run(main):
        fail(f"user {safe(name)!r} does not exist", EXIT_FAILED)
    console.print(f"user {safe(name)} removed; its sessions are ended")
