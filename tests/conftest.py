from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import fakeredis
import pytest
from redis.asyncio import Redis

from hiscrm_bus.settings import BusSettings
from tests.postgres_server import PostgresServer
from tests.redis_server import RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session; tests use their own key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for tests that kill or restart it."""
    server = RedisServer(tmp_path / "redis", persist=True)
    server.start()
    yield server
    server.stop()


_counter = iter(range(1_000_000))


def fast_settings(url: str, **overrides: object) -> BusSettings:
    """Settings with short timeouts, and a prefix of the test's own."""
    values: dict[str, object] = {
        "redis_url": url,
        "key_prefix": f"t{next(_counter)}:",
        "ping_interval_s": 0.5,
        "ping_timeout_s": 0.5,
        "backoff_min_s": 0.02,
        "backoff_max_s": 0.3,
        "ack_timeout_s": 0.3,
        "retry_backoff": 1.5,
        "max_attempts": 3,
        "claim_idle_s": 0.5,
    }
    values.update(overrides)
    return BusSettings.model_validate(values)


@pytest.fixture(params=["fake", "real"])
async def bus(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> AsyncIterator[tuple[Redis, BusSettings]]:
    """The same bus suite runs on fakeredis and on a real redis-server."""
    settings = fast_settings(redis_server.url)
    client: Redis
    if request.param == "fake":
        client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(version=(7,)))
    else:
        client = Redis.from_url(redis_server.url)
    yield client, settings
    await client.aclose()


@pytest.fixture
async def real(redis_server: RedisServer) -> AsyncIterator[tuple[Redis, BusSettings]]:
    settings = fast_settings(redis_server.url)
    client = Redis.from_url(redis_server.url)
    yield client, settings
    await client.aclose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session; tests take a database of their own
    (``database_url``). Tests that kill or restart a server make their own
    (``own_postgres_server``)."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def own_postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, for tests that kill or restart it."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


_database_counter = iter(range(1_000_000))


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test, on SQLite (aiosqlite) and on PostgreSQL
    (asyncpg); the PostgreSQL server starts only when a postgresql case runs, and the
    database is dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/hiscrm.db"
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"t{next(_database_counter)}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)


@pytest.fixture(autouse=True)
def _database_of_the_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Master a test starts (in process or as a process) keeps crawled data in a
    database of the test's own, never in the current directory: an SQLite file that is
    created when the first Master starts. Tests that need another URL set their own."""
    monkeypatch.setenv("HISCRM_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/master.db")
