"""What the Master does with a crawl batch the database does not take: a database that
is down, read-only (a standby mid-failover), full, locked or out of connections keeps
the batch pending in Redis until it takes it; only a batch whose own values the
database refuses is dead-lettered, the rest of its read stored. PostgreSQL says which by
the SQLSTATE (SQLAlchemy's asyncpg dialect wraps every server error in one class)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from sqlalchemy import exc
from sqlalchemy import text as sql

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import Received, append
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.archive import Archive, Arrival, Filter
from hiscrm_master.database import (
    DatabaseUnavailable,
    make_engine,
    refused_value,
    sqlstate,
    transient,
)
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from tests.postgres_server import PostgresServer

Bus = tuple[Redis, BusSettings]
_names = iter(range(1_000_000))

# PostgreSQL errors that mean "not now": the batch waits in Redis
NOT_NOW = {
    "40P01": "deadlock detected",
    "40001": "serialization failure",
    "53100": "disk full",
    "53300": "too many connections",
    "57P01": "admin shutdown",
    "25006": "read-only transaction (a standby)",
    "57014": "statement timeout",
    "55P03": "lock not available",
    "08006": "connection failure",
    "28P01": "wrong password",
    "3D000": "no such database",
    "58030": "I/O error",
}
# what a bound value causes: the same batch is refused again
BAD_VALUE = {
    "22001": "string too long",
    "22021": "not UTF-8",
    "23505": "unique violation",
    "23514": "check violation",
}
# neither: a statement the database refuses (a bug of ours), no fault of the data
NEITHER = {"42P01": "no such table", "42601": "syntax error", "P0001": "raised"}


@pytest.mark.real
async def test_postgresql_errors_are_classified_by_sqlstate(
    postgres_server: PostgresServer,
) -> None:
    name = f"classify{next(_names)}"
    engine = make_engine(postgres_server.create_database(name))
    seen: dict[str, tuple[str | None, bool, bool]] = {}
    try:
        for code in (*NOT_NOW, *BAD_VALUE, *NEITHER):
            raise_it = f"DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '{code}'; END $$"
            try:
                async with engine.connect() as conn:
                    await conn.execute(sql(raise_it))
            except exc.DBAPIError as error:
                seen[code] = (sqlstate(error), transient(error), refused_value(error))
    finally:
        await engine.dispose()
        postgres_server.drop_database(name)
    expected = {
        **{code: (code, True, False) for code in NOT_NOW},
        **{code: (code, False, True) for code in BAD_VALUE},
        **{code: (code, False, False) for code in NEITHER},
    }
    assert seen == expected


@pytest.mark.real
async def test_a_wrong_password_and_a_missing_database_are_unavailable(
    postgres_server: PostgresServer,
) -> None:
    port = postgres_server.port
    for url, why in (
        (f"postgresql+asyncpg://hiscrm:wrong@127.0.0.1:{port}/postgres", "password"),
        (postgres_server.url("no_such_database"), '"no_such_database" does not exist'),
    ):
        archive = Archive.open(url)
        try:
            with pytest.raises(DatabaseUnavailable, match=why) as raised:
                await archive.counts(["acc-1"])
            assert "<class" not in str(raised.value)  # the driver's words, not its class
        finally:
            await archive.close()


def test_sqlite_locked_and_failing_disks_are_not_now_and_constraints_are_bad_values() -> None:
    def wrapped(cls: type[exc.DBAPIError], error: Exception) -> exc.DBAPIError:
        return cls("INSERT INTO comments", {}, error)

    for message in (
        "database is locked",
        "disk I/O error",
        "database or disk is full",
        "attempt to write a readonly database",
    ):
        error = wrapped(exc.OperationalError, sqlite3.OperationalError(message))
        assert (transient(error), refused_value(error)) == (True, False), message
    constraint = wrapped(exc.IntegrityError, sqlite3.IntegrityError("CHECK constraint failed"))
    assert (transient(constraint), refused_value(constraint)) == (False, True)
    # a value a column type will not bind
    binding = exc.StatementError("cannot bind", "INSERT", {}, ValueError("year 0 is out of range"))
    assert (transient(binding), refused_value(binding)) == (False, True)
    # our own code failing on a batch's values (no database spoke): that batch's, tried
    # alone — held back, it would block every worker's ingest behind it for ever
    for ours in (OverflowError("date value out of range"), KeyError("x"), TypeError("naive")):
        assert (transient(ours), refused_value(ours)) == (False, True)


# -- the Master's ingest -------------------------------------------------------------


def comment(item_id: str, text: str = "好看") -> CrawledItem:
    return CrawledItem(kind="comment", item_id=item_id, text=text, created_at=datetime.now(UTC))


def batch(*items: CrawledItem) -> CrawlBatch:
    return CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=items)


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Iterator[str]:
    """The name of a PostgreSQL database of the test's own."""
    name = f"ingest{next(_names)}"
    postgres_server.create_database(name)
    yield name
    postgres_server.drop_database(name)


@pytest.fixture
async def pg_master(
    real: Bus, postgres_server: PostgresServer, pg_database: str
) -> AsyncIterator[Master]:
    """A Master (not running: the test runs its ingest) on ``pg_database``, acc-1 on a
    live worker w1."""
    redis, settings = real
    await AccountStore(redis, settings.keys).create(
        AccountConfig(id="acc-1", platform="synthetic", worker_id="w1")
    )
    await WorkerRegistry(redis, settings.keys).heartbeat(
        WorkerInfo(id="w1", platforms=("synthetic",), capacity=10), 600
    )
    values = {
        **settings.model_dump(),
        "master_id": "m1",
        "database_url": postgres_server.url(pg_database),
    }
    master = Master(MasterSettings.model_validate(values), redis)
    await master.tend_archive()  # as on start: the schema is made
    yield master
    await master.archive.close()


async def pending(redis: Redis, settings: BusSettings) -> int:
    stream = settings.keys.worker_stream("w1", "ingest")
    summary: Any = await redis.xpending(stream, "masters")
    return int(summary["pending"])


async def stored(archive: Archive) -> list[str]:
    return [i.item_id for i in await archive.items("acc-1", Filter(limit=None))]


class Reads:
    """The Master's handler of its ingest reads, watched: each read's outcome (None:
    stored, or the error that left it pending), with an event for the next one."""

    def __init__(self, handler: Callable[[list[Received]], Awaitable[None]]) -> None:
        self.handler = handler
        self.outcomes: list[BaseException | None] = []
        self._next = anyio.Event()

    async def __call__(self, received: list[Received]) -> None:
        try:
            await self.handler(received)
        except Exception as error:
            self.outcomes.append(error)
            raise
        else:
            self.outcomes.append(None)
        finally:
            self._next.set()
            self._next = anyio.Event()

    async def until(self, done: Callable[[BaseException | None], bool]) -> BaseException | None:
        """The first outcome from now on for which ``done`` holds."""
        start = len(self.outcomes)
        with anyio.fail_after(30):
            while True:
                for outcome in self.outcomes[start:]:
                    if done(outcome):
                        return outcome
                start = len(self.outcomes)
                await self._next.wait()


@pytest.mark.real
async def test_a_batch_that_arrives_while_postgresql_is_read_only_is_stored_after(
    real: Bus, pg_master: Master, postgres_server: PostgresServer, pg_database: str
) -> None:
    redis, settings = real
    master = pg_master
    name = pg_database
    stream = settings.keys.worker_stream("w1", "ingest")
    await master.archive.store([Arrival(batch(comment("c-before")))])

    # a standby promoted late: every new session of the database is read-only
    postgres_server.psql(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    await master.archive.engine.dispose()  # the Master's next connections are new ones
    reads = Reads(master.on_batches)
    async with anyio.create_task_group() as tg:
        await tg.start(master.ingest.run_received, reads)
        await append(redis, stream, batch(comment("c-during"), comment("d-2")), 10_000)

        refused = await reads.until(lambda o: o is not None)
        assert isinstance(refused, DatabaseUnavailable)
        assert "read-only transaction" in str(refused)
        assert await master.deadletters.counts() == {}
        assert await pending(redis, settings) == 1  # the entry waits in Redis
        assert await stored(master.archive) == ["c-before"]

        postgres_server.psql(f"ALTER DATABASE {name} SET default_transaction_read_only = off")
        await master.archive.engine.dispose()
        await reads.until(lambda o: o is None)
        tg.cancel_scope.cancel()

    assert sorted(await stored(master.archive)) == ["c-before", "c-during", "d-2"]
    assert await pending(redis, settings) == 0
    assert await master.deadletters.counts() == {}


def received(message: CrawlBatch, n: int) -> Received:
    return Received(source="w1", stream="w1:ingest", message=message, entry_id=f"{n}-0")


@pytest.mark.real
async def test_only_the_batch_whose_value_the_database_refuses_is_dead_lettered(
    pg_master: Master, postgres_server: PostgresServer, pg_database: str
) -> None:
    master = pg_master
    name = pg_database
    postgres_server.psql(
        "ALTER TABLE comments ADD CONSTRAINT no_poison CHECK (text <> 'poison')", name
    )
    good, bad = batch(comment("c1"), comment("c2")), batch(comment("c3", "poison"))
    await master.on_batches([received(good, 1), received(bad, 2)])

    assert sorted(await stored(master.archive)) == ["c1", "c2"]
    assert await master.deadletters.counts() == {"w1:ingest": 1}
    entries: Any = await master.redis.xrange(master.keys.deadletter)
    reason = entries[-1][1][b"reason"].decode()
    assert reason.startswith("database_refused: ") and "no_poison" in reason


@pytest.mark.real
async def test_a_statement_the_database_refuses_for_no_fault_of_the_data_waits(
    pg_master: Master, postgres_server: PostgresServer, pg_database: str
) -> None:
    """An error that is neither "not now" nor a bad value (a bug, a trigger an operator
    added): the read stays pending, nothing is thrown away."""
    master = pg_master
    name = pg_database
    postgres_server.psql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'maintenance'; END $$; "
        "CREATE TRIGGER refuse BEFORE INSERT ON comments EXECUTE FUNCTION refuse()",
        name,
    )
    read = [received(batch(comment("c1")), 1), received(batch(comment("c2")), 2)]
    with pytest.raises(DatabaseUnavailable, match=r"stay pending.*maintenance"):
        await master.on_batches(read)
    assert await master.deadletters.counts() == {}

    postgres_server.psql("DROP TRIGGER refuse ON comments", name)
    await master.on_batches(read)  # read again: stored
    assert sorted(await stored(master.archive)) == ["c1", "c2"]


# -- retention -----------------------------------------------------------------------


def test_a_retention_over_100_years_is_one_sentence() -> None:
    with pytest.raises(ValueError, match="HISCRM_RETENTION_DAYS must be at most 36500"):
        MasterSettings(retention_days=1_000_000)
    with pytest.raises(ValueError, match="HISCRM_RETENTION_DAYS must be at most 36500"):
        MasterSettings(retention_days=float("inf"))
    assert MasterSettings(retention_days=36_500).retention_days == 36_500


async def test_a_retention_longer_than_the_calendar_keeps_everything(database_url: str) -> None:
    archive = Archive.open(database_url, retention_days=1_000_000)
    try:
        assert archive.cutoff() is None
        await archive.store([Arrival(batch(comment("c1")))])
        assert await archive.prune() == 0
        assert await stored(archive) == ["c1"]
    finally:
        await archive.close()


@pytest.mark.real
async def test_a_batch_our_code_fails_on_is_dead_lettered_alone_and_ingest_flows(
    pg_master: Master, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure of ours on one batch's values (no database error) costs that batch
    only: the others of the read are stored, the read is not held (review finding: it
    had stopped every worker's ingest behind it)."""
    master = pg_master
    store = master.archive.store

    async def failing_on_poison(arrivals: list[Arrival]) -> Any:
        if any(i.text == "poison" for a in arrivals for i in a.batch.items):
            raise TypeError("can't compare offset-naive and offset-aware datetimes")
        return await store(arrivals)

    monkeypatch.setattr(master.archive, "store", failing_on_poison)
    good, bad = batch(comment("c1"), comment("c2")), batch(comment("c3", "poison"))
    await master.on_batches([received(good, 1), received(bad, 2)])
    assert sorted(await stored(master.archive)) == ["c1", "c2"]
    assert await master.deadletters.counts() == {"w1:ingest": 1}


def test_a_time_without_a_zone_is_taken_as_utc() -> None:
    naive = CrawledItem(kind="dm", item_id="d1", text="hi", created_at=datetime(2026, 1, 2, 3))
    assert naive.created_at == datetime(2026, 1, 2, 3, tzinfo=UTC)
