"""``hiscrm login ACCOUNT``: a QR login followed from request to the worker's ACK."""

from __future__ import annotations

import base64
import time
from contextlib import aclosing
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer

from hiscrm_bus.messages import (
    LoginFailed,
    LoginProgress,
    LoginQrCode,
    LoginSuccess,
    Message,
)
from hiscrm_master.login import (
    END_MARGIN_S,
    LoginStarted,
    LoginUnavailable,
    follow_login,
    start_login,
    wait_login_applied,
)
from hiscrm_master.settings import MasterSettings
from hiscrm_master.updates import Updates

from .common import (
    CLI_SENDER,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    RedisUrl,
    command_settings,
    console,
    fail,
    redis_client,
    run,
)
from .qrview import qr_to_text
from .terminal import safe

SENDER = CLI_SENDER


def login(
    account_id: Annotated[str, typer.Argument(metavar="ACCOUNT")],
    timeout: Annotated[float, typer.Option(min=1, help="Seconds the login may take.")] = 120.0,
    qr_dir: Annotated[Path, typer.Option(help="Where the QR code PNGs are saved.")] = Path(
        "var/qr"
    ),
    redis_url: RedisUrl = None,
) -> None:
    """Log an account in with a QR code: shows the code, follows the scan, and waits
    until the worker applied the new platform_user_id."""
    settings = command_settings(redis_url)

    async def main() -> int:
        async with redis_client(settings) as redis:
            # an unknown account is said as such (AccountNotFound: exit 1)
            await Updates(redis, settings, SENDER).store.get(account_id)
            try:
                login = await start_login(
                    redis, settings, account_id, timeout, SENDER, placement_wait_s=10
                )
            except LoginUnavailable as exc:
                fail(str(exc), EXIT_USAGE)
            started = time.monotonic()
            session_id = login.request.session_id
            console.print(
                f"login {safe(session_id)} for {safe(account_id)}: waiting for the worker…"
            )
            result: Message | None = None
            with anyio.move_on_after(timeout + END_MARGIN_S), console.status("waiting for a scan…"):
                result = await _follow(redis, settings, login, qr_dir)
            if result is None:
                console.print("[red]timed out[/red]: the worker reported no end to the login")
                return EXIT_TIMEOUT
            if isinstance(result, LoginFailed):
                console.print(
                    f"[red]login failed[/red] ({safe(result.reason)}): {safe(result.error)}"
                )
                return EXIT_TIMEOUT if result.reason == "timeout" else EXIT_FAILED
            assert isinstance(result, LoginSuccess)
            console.print(
                f"[green]logged in[/green]: platform_user_id {safe(result.platform_user_id)}"
            )
            with console.status("waiting for the worker to apply it…"):
                outcome = await wait_login_applied(redis, settings, login)
            if outcome is None:
                console.print("timed out waiting for the config update's outcome")
                return EXIT_TIMEOUT
            console.print(
                f"config update {safe(outcome.status)}: version {outcome.version} by worker "
                f"{safe(outcome.worker_id)} in {outcome.latency_ms:.1f} ms "
                f"(login took {time.monotonic() - started:.1f}s)"
            )
            return EXIT_OK if outcome.status == "applied" else EXIT_FAILED

    raise typer.Exit(run(main))


async def _follow(
    redis: Any, settings: MasterSettings, login: LoginStarted, qr_dir: Path
) -> LoginSuccess | LoginFailed | None:
    """Print the session's events until it ends (re-sending the request until the
    worker is heard from); its end, or None if the events ended without one."""
    async with aclosing(follow_login(redis, settings, login)) as events:
        async for message in events:
            if isinstance(message, LoginQrCode):
                _show_qr(message, login.request.account_id, qr_dir)
            elif isinstance(message, LoginProgress):
                console.print(f"login: {safe(message.status.replace('_', ' '))}")
            else:
                return message
    return None


def _show_qr(message: LoginQrCode, account_id: str, qr_dir: Path) -> None:
    try:
        png = base64.b64decode(message.png_b64, validate=True)
    except ValueError:  # binascii.Error: what the worker sent is no base64
        console.print("login: the worker sent a QR code that is not an image; waiting for the next")
        return
    qr_dir.mkdir(parents=True, exist_ok=True)
    path = qr_dir / f"{account_id}-{message.session_id[:8]}-{message.refresh}.png"
    path.write_bytes(png)
    what = "QR code" if message.refresh == 0 else f"QR code refreshed ({message.refresh})"
    console.print(f"{what}: saved to {safe(path)}; scan it with the app")
    text = qr_to_text(png)
    if text and console.is_terminal:
        console.print(text, highlight=False)
