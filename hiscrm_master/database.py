"""The Master's database of crawled data: which engine a URL names, how to connect, how
the schema is brought up to date, and which errors mean "down for now".

SQLite (through aiosqlite) is the embedded default, one file with nothing to install;
PostgreSQL (through asyncpg) is for production. Everything else reads and writes through
SQLAlchemy's async engine made here. Redis carries only the bus (DESIGN.md §6)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
from pydantic import SecretStr

from hiscrm_bus.errors import ConfigurationError, HiscrmError, Unavailable
from hiscrm_bus.settings import masked_url, url_password
from hiscrm_bus.settings import read_password_file as bus_password_file

if TYPE_CHECKING:  # SQLAlchemy loads when a command uses the database, not at start
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite+aiosqlite:///var/hiscrm.db"
# the drivers hiscrm ships; a URL naming only the database gets its driver added
DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
CONNECT_TIMEOUT_S = 5.0
# a PostgreSQL advisory lock key: one Master migrates at a time
_MIGRATE_LOCK = 0x6869_7363  # "hisc"


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached, or is locked or full for now. Nothing was
    written; the caller retries later (the stream entries stay unacknowledged)."""


class DatabaseRefused(HiscrmError):
    """The database answered, and refused what a reader asked (no hiscrm schema there
    yet, no permission): one sentence for the operator, the password masked."""


def database_url(url: str) -> str:
    """The URL with its async driver; raises ConfigurationError (password masked) for
    anything else than SQLite or PostgreSQL."""
    scheme, sep, rest = url.partition("://")
    backend = scheme.partition("+")[0].lower()
    if not sep or backend not in DRIVERS:
        raise ConfigurationError(
            f"database URL {masked_url(url)!r}: hiscrm stores crawled data in SQLite or "
            "PostgreSQL (sqlite+aiosqlite:///path/to/file.db or "
            "postgresql+asyncpg://user@host/db)"
        )
    driver = DRIVERS[backend]
    if scheme.lower() not in (backend, driver):
        raise ConfigurationError(
            f"database URL {masked_url(url)!r}: use the {driver} driver "
            "(the async one hiscrm ships)"
        )
    if backend == "sqlite" and not rest.lstrip("/"):
        raise ConfigurationError(
            f"database URL {masked_url(url)!r} names no file (sqlite+aiosqlite:///var/hiscrm.db)"
        )
    if backend == "postgresql":
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 -- it raises on a port that is not a number
        except ValueError:
            raise ConfigurationError(
                f"database URL {masked_url(url)!r} has no valid host and port (a password with "
                "/ ? # @ in it must be percent-encoded)"
            ) from None
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigurationError(f"database URL {masked_url(url)!r} names no host")
    return f"{driver}://{rest}"


def _both_set(url: str) -> ConfigurationError:
    return ConfigurationError(
        f"the database URL {masked_url(url)!r} carries a password and "
        "HISCRM_DATABASE_PASSWORD_FILE gives one too: set one, not both"
    )


def read_password_file(url: str, path: Path) -> SecretStr:
    """The password in ``path`` for ``url`` (read now, once; its trailing newline
    stripped). ConfigurationError, in one sentence, when the file cannot be read or is
    empty, when the URL carries a password too, or names SQLite (which has none)."""
    if database_url(url).startswith("sqlite"):
        raise ConfigurationError(
            f"HISCRM_DATABASE_PASSWORD_FILE is set but the database URL {masked_url(url)!r} "
            "names SQLite, which has no password: unset it, or use a PostgreSQL URL"
        )
    if url_password(url) is not None:
        raise _both_set(url)
    try:
        password = bus_password_file(path, "database", "HISCRM_DATABASE_PASSWORD_FILE")
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return SecretStr(password)


def missing_file(url: str) -> Path | None:
    """The SQLite file ``url`` names when it does not exist (None: it does, or the URL
    names PostgreSQL)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(database_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database or "")
    return None if path.exists() else path


def is_sqlite(engine: AsyncEngine | AsyncConnection | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(url: str, *, password: SecretStr | None = None, create: bool = True) -> AsyncEngine:
    """An engine for ``url`` (``password``: PostgreSQL's, from
    HISCRM_DATABASE_PASSWORD_FILE, given to the driver only). The SQLite file's
    directory is created (0700) unless ``create`` is false: then a missing file is
    DatabaseUnavailable, and nothing is created."""
    from sqlalchemy import event
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    parsed = make_url(database_url(url))
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        if str(path) != ":memory:" and create:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        args: dict[str, Any] = {"timeout": 30}
        if not create:
            # read-write, never create: a reader looking in the wrong place must not
            # leave an empty database there
            parsed = parsed.set(database=f"file:{path.resolve()}?mode=rw", query={"uri": "true"})
        engine = create_async_engine(parsed, connect_args=args)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    if password is not None:
        if url_password(url) is not None:
            raise _both_set(url)
        parsed = parsed.set(password=password.get_secret_value())
    return create_async_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=5,
        connect_args={"timeout": CONNECT_TIMEOUT_S, "command_timeout": 60},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers (hiscrm data) never block the Master's writes; a busy writer is waited
    # for, not an error
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "busy_timeout=30000",
        "foreign_keys=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


# PostgreSQL's SQLSTATEs that mean "down, locked, full or read-only for now": classes
# (the first two characters) connection exception, invalid authorization, transaction
# rollback (deadlock, serialization), insufficient resources (disk full, too many
# connections), operator intervention (shutdown, statement timeout), system error
_TRANSIENT_CLASSES = frozenset({"08", "28", "40", "53", "57", "58"})
# read-only transaction (a standby, mid-failover), lock not available, no such database
_TRANSIENT_STATES = frozenset({"25006", "55P03", "3D000"})
# data exception (a value out of range, too long, not UTF-8), integrity constraint
_VALUE_CLASSES = frozenset({"22", "23"})


def sqlstate(error: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE for ``error``: the driver error SQLAlchemy wraps (its
    ``orig``), or one it was raised from. None when none carries one (SQLite, a lost
    connection, an error of ours)."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        state = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(state, str) and len(state) == 5:
            return state.upper()
        for nested in (getattr(current, "orig", None), current.__cause__):
            if isinstance(nested, BaseException):
                todo.append(nested)
    return None


def transient(error: BaseException) -> bool:
    """Whether ``error`` means the database is down, locked, full or read-only for now
    (retry later), as opposed to a statement it refuses (a bug or bad data).

    PostgreSQL says which by the SQLSTATE (SQLAlchemy's asyncpg dialect wraps every
    server error in one class, so the class tells nothing); SQLite, which has none,
    raises OperationalError for a locked or busy database, a disk I/O error, a full
    disk or a read-only file."""
    from sqlalchemy import exc

    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    state = sqlstate(error)
    if state is not None:
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
    if isinstance(error, exc.DBAPIError):
        return isinstance(error, exc.OperationalError | exc.InterfaceError) and not refused_value(
            error
        )
    return isinstance(error, OSError | TimeoutError | exc.TimeoutError | ConnectionError)


def refused_value(error: BaseException) -> bool:
    """Whether ``error`` is the database (or the driver, or SQLAlchemy binding it)
    refusing a value the statement carries: bad data, which the same statement will
    refuse again. Anything else (down, locked, a bug of ours) is no fault of the data."""
    from sqlalchemy import exc

    if not isinstance(error, exc.SQLAlchemyError | OSError | ConnectionError | TimeoutError):
        # not the database speaking: our own code failed on what this batch carries
        # (a comparison, a conversion); held back, it would block every worker's
        # ingest behind it for ever, so it is the batch's, tried alone
        return isinstance(error, ValueError | TypeError | ArithmeticError | LookupError)
    if not isinstance(error, exc.StatementError):
        return False
    state = sqlstate(error)
    if state is not None:
        return state[:2] in _VALUE_CLASSES
    if isinstance(error, exc.DataError | exc.IntegrityError):
        return True  # SQLite: a constraint, a string or blob too big
    if isinstance(error, exc.DBAPIError):
        # SQLite's driver refusing a parameter's type
        return "binding parameter" in str(error.orig)
    # raised while binding, by a column type's conversion of the value
    return isinstance(error.orig, ValueError | TypeError | ArithmeticError)


@contextlib.asynccontextmanager
async def guarded(shown: str, what: str) -> AsyncIterator[None]:
    """Turn the errors that mean "down for now" into DatabaseUnavailable, naming the
    database (password masked) and what was being done. The work inside is shielded
    from cancellation: a process told to stop lets a transaction finish (or fail)
    rather than leave the driver mid-statement, which hung aiosqlite's shutdown."""
    try:
        with anyio.CancelScope(shield=True):
            yield
    except DatabaseUnavailable:
        raise
    except Exception as error:
        if not transient(error):
            raise
        reason = _reason(error)
        if "unable to open database file" in reason:
            reason += " (no database there yet: is HISCRM_DATABASE_URL the Master's?)"
        elif "no such table" in reason:
            reason += _NO_SCHEMA
        raise DatabaseUnavailable(f"database {shown} unavailable while {what}: {reason}") from error


def refusal(shown: str, error: BaseException) -> DatabaseRefused | None:
    """``error`` (SQLAlchemy's) as one sentence naming the database ``shown``; None
    for any other error."""
    from sqlalchemy import exc

    if not isinstance(error, exc.SQLAlchemyError):
        return None
    reason = _reason(error)
    if sqlstate(error) == "42P01" or "no such table" in reason:
        reason += _NO_SCHEMA
    return DatabaseRefused(f"the database {shown} refused: {reason}")


_NO_SCHEMA = " (no hiscrm schema there yet: has a Master started with this HISCRM_DATABASE_URL?)"
# how SQLAlchemy's asyncpg dialect words a server error: "<class 'asyncpg....'>: text"
_DRIVER_CLASS = re.compile(r"^<class '[\w.]+'>: ")


def _reason(error: BaseException) -> str:
    orig = getattr(error, "orig", None) or error
    first = str(orig).strip().splitlines()
    return _DRIVER_CLASS.sub("", first[0] if first else type(orig).__name__)[:300]


async def migrate(engine: AsyncEngine, shown: str) -> None:
    """Bring the schema up to date (Alembic, ``hiscrm_master/migrations``). Several
    Masters may start at once: PostgreSQL serialises them with an advisory lock, SQLite
    with a lock file beside the database."""
    async with (
        guarded(shown, "migrating the schema"),
        _file_lock(engine),
        engine.begin() as conn,
    ):
        if not is_sqlite(conn):
            from sqlalchemy import text

            await conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK})"))
        await conn.run_sync(_upgrade)
    log.info("database %s: schema up to date", shown)


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "hiscrm_master:migrations")
    config.attributes["connection"] = connection
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:
        alembic_log.setLevel(logging.WARNING)  # its plugin set-up lines, at every start
    command.upgrade(config, "head")


@contextlib.asynccontextmanager
async def _file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """An exclusive lock on ``<database>.migrate-lock``, waited for in a thread (the
    event loop goes on meanwhile)."""
    database = engine.url.database or ""
    if not is_sqlite(engine) or database in ("", ":memory:") or database.startswith("file:"):
        yield
        return
    lock = await anyio.to_thread.run_sync(Path(f"{database}.migrate-lock").open, "a")
    try:
        await anyio.to_thread.run_sync(fcntl.flock, lock, fcntl.LOCK_EX)
        yield
    finally:
        lock.close()  # releases the lock
