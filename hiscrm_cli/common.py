"""What every command shares: logging set-up, settings from options, Redis, exit codes."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import anyio
import typer
from redis import exceptions as rexc
from rich.console import Console

from hiscrm_bus.errors import AccountNotFound, BusUnavailable, ConfigurationError, HiscrmError

from .terminal import clean, json_text, safe

# Settings (pydantic-settings), the connection and the Master's settings are imported
# where they are used: every command imports this module, and `hiscrm session` and
# `hiscrm sandbox` read no settings and talk to no Redis (issue 11: start-up time)
if TYPE_CHECKING:
    from pydantic_settings import BaseSettings
    from redis.asyncio import Redis

    from hiscrm_bus.settings import BusSettings
    from hiscrm_master.archive import Archive
    from hiscrm_master.settings import MasterSettings

EXIT_OK = 0
EXIT_FAILED = 1  # the operation ran and failed (rejected, failed, problems found)
EXIT_USAGE = 2  # bad input or Redis unreachable; nothing was done
EXIT_TIMEOUT = 3

S = TypeVar("S", bound="BaseSettings")
T = TypeVar("T")
# no :emoji: codes: what others wrote is shown as typed (see terminal.py)
console = Console(soft_wrap=True, emoji=False)
err_console = Console(stderr=True, soft_wrap=True, emoji=False)

RedisUrl = Annotated[
    str | None,
    typer.Option("--redis-url", envvar="HISCRM_REDIS_URL", help="Redis URL.", show_default=False),
]


class TextFormatter(logging.Formatter):
    """The processes' log lines. A record's message and traceback carry what platforms,
    workers and Redis wrote (a platform's error text, a task's error, a stored value):
    control characters (escape sequences, bidi overrides, line breaks) are shown
    escaped, so none acts on the operator's terminal and no message forges a line of
    its own; a traceback keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return clean(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return "\n".join(clean(line) for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(clean(line) for line in super().formatStack(stack_info).splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line; every value kept, what a terminal acts on escaped
    (:func:`terminal.json_text`)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json_text(doc, indent=None)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("redis").setLevel(logging.WARNING)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err_console.print(f"[red]error:[/red] {safe(message)}", highlight=False)
    raise typer.Exit(code)


def build(cls: type[S], **options: Any) -> S:
    """Settings from env, overridden by the options that were given."""
    from pydantic import ValidationError

    from hiscrm_bus.settings import BusSettings

    given = {k: v for k, v in options.items() if v is not None}
    try:
        settings = cls(**given)
    except ValidationError as exc:
        # never str(exc): it quotes the input, which may hold a password
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        # our own validators say it in a whole sentence; pydantic's own need the field
        error = first.get("ctx", {}).get("error") if first["type"] == "value_error" else None
        message = str(error) if error is not None else first["msg"]
        fail(f"invalid setting {where}: {message}" if where else message)
    if isinstance(settings, BusSettings):
        _warn_of_url_password(settings)
    return settings


_warned = False


def _warn_of_url_password(settings: BusSettings) -> None:
    """Once per process: a password in the URL shows where a file would not."""
    from hiscrm_bus.settings import url_password

    global _warned  # noqa: PLW0603 -- one warning per process, however many settings
    if _warned or url_password(settings.redis_url) is None:
        return
    _warned = True
    if any(a == "--redis-url" or a.startswith("--redis-url=") for a in sys.argv):
        where = "the password in --redis-url is visible to every user in `ps`"
    else:
        where = "the password in HISCRM_REDIS_URL is visible in this process's environment"
    err_console.print(
        f"[yellow]warning:[/yellow] {where}; put it in a file (mode 0600) and set "
        "HISCRM_REDIS_PASSWORD_FILE instead",
        highlight=False,
    )


CLI_SENDER = "cli"  # the sender name of what operator commands write


def command_settings(redis_url: str | None) -> MasterSettings:
    """Settings of a one-shot operator command (it acts on the Master's behalf)."""
    from hiscrm_master.settings import MasterSettings

    return build(MasterSettings, redis_url=redis_url, master_id=CLI_SENDER)


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run an async command; known errors become one sentence and an exit code."""
    try:
        return anyio.run(main)
    except BusUnavailable as exc:
        fail(str(exc))
    except AccountNotFound as exc:
        fail(str(exc), EXIT_FAILED)
    except (ConfigurationError, HiscrmError) as exc:
        fail(str(exc))
    except rexc.NoPermissionError as exc:
        fail(f"Redis refused: this user may not do that ({exc})")
    except rexc.RedisError as exc:
        fail(f"Redis refused the command: {exc}")


@asynccontextmanager
async def archive_of(settings: MasterSettings) -> AsyncIterator[Archive]:
    """The crawled-data database, for reading (a missing SQLite file is not created:
    DatabaseUnavailable says where it was looked for)."""
    from hiscrm_master.archive import Archive
    from hiscrm_master.database import refusal

    archive = Archive.of(settings, create=False)
    try:
        yield archive
    except Exception as exc:
        # what the database refuses (no schema there yet, no permission) is one
        # sentence too, not SQLAlchemy's traceback
        if (refused := refusal(archive.shown, exc)) is None:
            raise
        raise refused from exc
    finally:
        with anyio.CancelScope(shield=True):
            await archive.close()


@asynccontextmanager
async def redis_client(settings: Any) -> AsyncIterator[Redis]:
    from hiscrm_bus.connection import connect

    client = await connect(settings)
    try:
        yield client
    finally:
        with anyio.CancelScope(shield=True):
            await client.aclose()


async def serve_until_signalled(service: Callable[..., Coroutine[Any, Any, None]]) -> None:
    """Run a long-lived service until SIGTERM or Ctrl-C, then cancel it cleanly."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    logging.getLogger("hiscrm").info(
                        "received %s; shutting down", signal.Signals(signum).name
                    )
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        await tg.start(service)
        await anyio.sleep_forever()
