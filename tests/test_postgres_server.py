"""The PostgreSQL test server (tests/postgres_server.py) and its fixtures: each test
gets a database of its own, the password never shows on a command line, a killed
server comes back with its data, and a server that cannot start says why."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.real


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))


async def tables(url: str) -> set[str]:
    conn = await connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await conn.close()


async def test_two_databases_are_apart(postgres_server: PostgresServer) -> None:
    first = postgres_server.create_database("iso_a")
    second = postgres_server.create_database("iso_b")
    try:
        assert first != second
        assert urlsplit(first).path == "/iso_a"
        conn = await connect(first)
        try:
            await conn.execute("CREATE TABLE accounts (id int PRIMARY KEY)")
            await conn.execute("INSERT INTO accounts VALUES (1)")
            assert await conn.fetchval("SELECT current_database()") == "iso_a"
        finally:
            await conn.close()
        assert await tables(first) == {"accounts"}
        assert await tables(second) == set()
    finally:
        postgres_server.drop_database("iso_a")
        postgres_server.drop_database("iso_b")


def cmdlines(pids: Iterable[int] | None = None) -> dict[int, bytes]:
    """The command lines of ``pids`` (of every process when None) that still run."""
    if pids is None:
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    found = {}
    for pid in pids:
        try:
            found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile
    return found


async def test_the_password_is_on_no_command_line(postgres_server: PostgresServer) -> None:
    password = postgres_server.password.encode()
    # a session held open, so that its backend is among the server's processes
    conn = await connect(postgres_server.url("postgres"))
    try:
        server = cmdlines(postgres_server.pids())
        everyone = cmdlines()
    finally:
        await conn.close()
    assert postgres_server.proc is not None
    assert postgres_server.proc.pid in server  # the postmaster
    # the backend of our session: "postgres: <role> <database> <client> <state>"
    assert any(b"postgres: hiscrm postgres 127.0.0.1(" in c for c in server.values()), server
    for pid, cmdline in {**everyone, **server}.items():
        assert password not in cmdline, f"the password is on the command line of {pid}"
    # nor in the cluster's files: initdb's password file is gone
    assert list(postgres_server.workdir.glob("pwfile*")) == []


async def test_database_url_is_a_fresh_database(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        assert database_url == f"sqlite+aiosqlite:///{tmp_path}/hiscrm.db"
        assert not (tmp_path / "hiscrm.db").exists()
    else:
        assert database_url.startswith("postgresql+asyncpg://hiscrm:")
        assert await tables(database_url) == set()


async def test_a_killed_server_restarts_with_its_data(
    own_postgres_server: PostgresServer,
) -> None:
    server = own_postgres_server
    url = server.create_database("crash")
    conn = await connect(url)
    # the server runs with synchronous_commit=off: a commit that must outlive a crash
    # asks for it
    await conn.execute("SET synchronous_commit = on")
    await conn.execute("CREATE TABLE t (v text)")
    await conn.execute("INSERT INTO t VALUES ('kept')")
    old = set(server.pids())
    server.kill()
    assert server.pids() == []
    with pytest.raises((asyncpg.PostgresConnectionError, ConnectionError, OSError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()
    server.start()
    assert old.isdisjoint(server.pids())
    conn = await connect(url)
    try:
        assert await conn.fetchval("SELECT v FROM t") == "kept"
    finally:
        await conn.close()
    server.restart()
    assert await tables(url) == {"t"}


def test_a_failed_start_shows_the_log() -> None:
    server = PostgresServer(settings={"max_connections": "lots"})
    try:
        with pytest.raises(RuntimeError, match=r"(?s)did not start.*max_connections"):
            server.start()
        assert server.proc is None
    finally:
        server.remove()
