"""Crawled comments and DMs in the database: written by the Master's ingest consumer,
read by ``hiscrm data``, ``diagnose`` and the demo.

Exactly once: every item is inserted keyed by (account, platform item id), so a batch
written twice (a Master killed after the commit, before its XACK) stores nothing the
second time; the Master acknowledges the stream entries only after the commit. A read's
batches go in one transaction.

Removal: ``forget`` deletes what Redis received up to the removal and leaves a mark
(``accounts.removed_at_ms``, Redis' clock): a batch Redis received before the removal,
but the Master stores after it, is refused in the transaction that would write it. So a
removed account's data cannot come back, and an account added again starts empty."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio
from pydantic import SecretStr, ValidationError
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    and_,
    column,
    delete,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.settings import masked_url

from .database import (
    DatabaseUnavailable,
    guarded,
    is_sqlite,
    make_engine,
    migrate,
    missing_file,
)
from .schema import ID, ITEM_TABLES, accounts, comments, conversations, crawl_runs, messages, works
from .settings import MasterSettings

log = logging.getLogger(__name__)
Kind = Literal["comment", "dm"]
# ``hiscrm data --kind`` speaks in plurals
KINDS: dict[str, Kind] = {"comments": "comment", "dms": "dm"}
INT_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Arrival:
    """A crawl batch as the Master read it: ``received_ms`` is when Redis added its
    stream entry (0: unknown)."""

    batch: CrawlBatch
    received_ms: int = 0
    crawl_run: bool = True  # record the batch as a crawl run (not for moved old data)


@dataclass(frozen=True, slots=True)
class Stored:
    """What storing one batch did."""

    account_id: str
    worker_id: str
    new: dict[Kind, int]
    refused: bool = False  # the account was removed after Redis received the batch


@dataclass(frozen=True, slots=True)
class Filter:
    """What ``hiscrm data`` asks for: every given condition must hold."""

    kind: Kind = "comment"
    since: datetime | None = None
    work: str | None = None  # a work's id (comments)
    author: str | None = None  # an author's id or name, exactly
    grep: str | None = None  # text containing this, any case
    limit: int | None = 20


@dataclass(frozen=True, slots=True)
class Counts:
    """One account's data in the database."""

    comments: int = 0
    dms: int = 0
    works: int = 0
    conversations: int = 0
    crawl_runs: int = 0
    errors: int = 0
    last_crawl_at: datetime | None = None  # of the newest crawl batch stored


@dataclass(slots=True)
class Removed:
    """What ``forget`` deleted."""

    items: int = 0
    rows: dict[str, int] = field(default_factory=dict)


def _ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def _clip_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return _clean(str(value))[:ID]


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return max(0, min(value, INT_MAX))


def _clean(value: str) -> str:
    """PostgreSQL refuses NUL in text: a fan's NUL becomes U+FFFD (SQLite likewise)."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _raw(item: CrawledItem) -> dict[str, Any]:
    raw: dict[str, Any] = _scrub(item.model_dump(mode="json"))
    return raw


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return {_clean(str(k)): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


class Archive:
    """The crawled-data database of one deployment."""

    def __init__(
        self, engine: AsyncEngine, shown: str, *, retention_days: float | None = None
    ) -> None:
        self.engine = engine
        self.shown = shown  # the URL as it may be shown
        self.missing: str | None = None  # why a reader's SQLite file cannot be read
        self.retention_days = retention_days
        self._ready = False
        self._migrating = anyio.Lock()

    @classmethod
    def open(
        cls,
        url: str,
        *,
        password: SecretStr | None = None,
        retention_days: float | None = None,
        create: bool = True,
    ) -> Archive:
        """The archive at ``url``; ``create=False`` (readers) will not create a missing
        SQLite file (DatabaseUnavailable says so instead)."""
        archive = cls(
            make_engine(url, password=password, create=create),
            masked_url(url),
            retention_days=retention_days,
        )
        if not create and (path := missing_file(url)) is not None:
            # not even tried: a failed connect leaves aiosqlite's thread behind
            archive.missing = (
                f"database {archive.shown} unavailable: there is no file {path.resolve()} "
                "(no database there yet: is HISCRM_DATABASE_URL the Master's?)"
            )
        return archive

    @classmethod
    def of(cls, settings: MasterSettings, *, create: bool = True) -> Archive:
        """The archive ``settings`` name (HISCRM_DATABASE_URL and its password file)."""
        return cls.open(
            settings.database_url,
            password=settings.database_password(),
            retention_days=settings.retention_days,
            create=create,
        )

    async def close(self) -> None:
        await self.engine.dispose()

    async def ready(self) -> None:
        """Bring the schema up to date, once per process (raises DatabaseUnavailable)."""
        async with self._migrating:
            if not self._ready:
                await migrate(self.engine, self.shown)
                self._ready = True

    @property
    def sqlite(self) -> bool:
        return is_sqlite(self.engine)

    def _insert(self, table: Table) -> Any:
        return (sqlite.insert if self.sqlite else postgresql.insert)(table)

    def cutoff(self, now: datetime | None = None) -> datetime | None:
        """Items created before this are past retention (None: keep everything)."""
        if self.retention_days is None:
            return None
        try:
            return (now or datetime.now(UTC)) - timedelta(days=self.retention_days)
        except (OverflowError, ValueError):
            return None  # before year 1 (or no number): nothing is that old

    # -- writing ---------------------------------------------------------------------

    async def store(self, arrivals: Sequence[Arrival]) -> list[Stored]:
        """Store the batches in one transaction: new items inserted, known ones left
        as they are, each batch recorded as a crawl run (once). Raises
        DatabaseUnavailable when the database is down or locked (nothing written), and
        SQLAlchemy's error when it refuses the data."""
        if not arrivals:
            return []
        await self.ready()
        async with guarded(self.shown, "storing crawled items"), self.engine.begin() as conn:
            return await self._store(conn, arrivals)

    async def _store(self, conn: AsyncConnection, arrivals: Sequence[Arrival]) -> list[Stored]:
        ids = sorted({a.batch.account_id for a in arrivals})
        marks = dict(
            (
                await conn.execute(
                    select(accounts.c.account_id, accounts.c.removed_at_ms).where(
                        accounts.c.account_id.in_(ids), accounts.c.removed_at_ms.is_not(None)
                    )
                )
            ).all()
        )
        cutoff = self.cutoff()
        kept: list[tuple[Arrival, list[CrawledItem]]] = []
        results: dict[int, Stored] = {}
        for n, arrival in enumerate(arrivals):
            b = arrival.batch
            removed = marks.get(b.account_id)
            if removed is not None and arrival.received_ms <= removed:
                results[n] = Stored(b.account_id, b.worker_id, {}, refused=True)
                continue
            items = [i for i in b.items if cutoff is None or i.created_at >= cutoff]
            kept.append((arrival, items))
        new = await self._insert_items(conn, kept)
        runs = []
        for n, arrival in enumerate(arrivals):
            if n in results:
                continue
            b = arrival.batch
            counts = new.get(b.message_id, {})
            results[n] = Stored(b.account_id, b.worker_id, counts)
            if arrival.crawl_run:
                runs.append(
                    {
                        "message_id": b.message_id,
                        "account_id": b.account_id,
                        "worker_id": b.worker_id,
                        "crawled_at": b.crawled_at,
                        "received_at": _received(arrival),
                        "found": len(b.items),
                        "new_items": sum(counts.values()),
                        "error": None,
                    }
                )
        if runs:
            await conn.execute(self._insert(crawl_runs).on_conflict_do_nothing(), runs)
        return [results[n] for n in range(len(arrivals))]

    async def _insert_items(
        self, conn: AsyncConnection, kept: Sequence[tuple[Arrival, list[CrawledItem]]]
    ) -> dict[str, dict[Kind, int]]:
        """Insert the items not stored yet; returns per batch (message id) how many of
        each kind were new."""
        rows: dict[Kind, dict[tuple[str, str], dict[str, Any]]] = {"comment": {}, "dm": {}}
        owner: dict[tuple[Kind, str, str], str] = {}
        works_seen: dict[tuple[str, str], dict[str, Any]] = {}
        peers: dict[tuple[str, str], dict[str, Any]] = {}
        for arrival, items in kept:
            b = arrival.batch
            received = _received(arrival)
            for item in items:
                key = (b.account_id, _clean(item.item_id))  # as stored (and RETURNed)
                if key in rows[item.kind]:
                    continue
                owner[(item.kind, *key)] = b.message_id
                row = _row(b.account_id, item, received)
                rows[item.kind][key] = row
                if item.kind == "comment" and row["work_id"]:
                    title = item.extra.get("work_title")
                    w = works_seen.setdefault(
                        (b.account_id, row["work_id"]),
                        {
                            "account_id": b.account_id,
                            "work_id": row["work_id"],
                            "title": "",
                            "first_seen_at": received,
                            "last_seen_at": received,
                        },
                    )
                    if isinstance(title, str) and title:
                        w["title"] = _clean(title)
                elif item.kind == "dm" and row["conversation_id"]:
                    _peer(peers, b.account_id, row)
        new: dict[str, dict[Kind, int]] = {}
        for kind, by_key in rows.items():
            if not by_key:
                continue
            table = ITEM_TABLES[kind]
            stmt = (
                self._insert(table)
                .on_conflict_do_nothing(index_elements=["account_id", "item_id"])
                .returning(table.c.account_id, table.c.item_id)
            )
            result = await conn.execute(stmt, list(by_key.values()))
            for account_id, item_id in result.all():
                message_id = owner[(kind, account_id, item_id)]
                counts = new.setdefault(message_id, {})
                counts[kind] = counts.get(kind, 0) + 1
        if works_seen:
            await self._upsert_works(conn, list(works_seen.values()))
        if peers:
            await self._upsert_conversations(conn, list(peers.values()))
        return new

    async def _upsert_works(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        stmt = self._insert(works)
        title = func.coalesce(func.nullif(stmt.excluded.title, ""), works.c.title)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["account_id", "work_id"],
                set_={"title": title, "last_seen_at": stmt.excluded.last_seen_at},
            ),
            rows,
        )

    async def _upsert_conversations(
        self, conn: AsyncConnection, rows: list[dict[str, Any]]
    ) -> None:
        stmt = self._insert(conversations)
        newest = (func.max if self.sqlite else func.greatest)(
            conversations.c.last_message_at, stmt.excluded.last_message_at
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["account_id", "conversation_id"],
                set_={
                    "last_message_at": newest,
                    "peer_id": func.coalesce(stmt.excluded.peer_id, conversations.c.peer_id),
                    "peer": func.coalesce(
                        func.nullif(stmt.excluded.peer, ""), conversations.c.peer
                    ),
                },
            ),
            rows,
        )

    async def record_error(
        self, message_id: str, account_id: str, worker_id: str, error: str, at: datetime
    ) -> None:
        """A crawl error a worker reported, as a crawl run that found nothing."""
        await self.ready()
        async with guarded(self.shown, "recording a crawl error"), self.engine.begin() as conn:
            await conn.execute(
                self._insert(crawl_runs).on_conflict_do_nothing(),
                [
                    {
                        "message_id": message_id,
                        "account_id": account_id,
                        "worker_id": worker_id,
                        "crawled_at": at,
                        "received_at": datetime.now(UTC),
                        "found": 0,
                        "new_items": 0,
                        "error": _clean(error),
                    }
                ],
            )

    async def forget(self, account_id: str, removed_ms: int) -> Removed:
        """Delete what Redis received for the account up to ``removed_ms`` and mark it
        removed then (see the module docstring)."""
        await self.ready()
        until = _ms(removed_ms)
        done = Removed()
        async with guarded(self.shown, "deleting crawled data"), self.engine.begin() as conn:
            mark = self._insert(accounts)
            await conn.execute(
                mark.on_conflict_do_update(
                    index_elements=["account_id"],
                    set_={
                        "removed_at_ms": (func.max if self.sqlite else func.greatest)(
                            func.coalesce(accounts.c.removed_at_ms, 0),
                            mark.excluded.removed_at_ms,
                        )
                    },
                ),
                [{"account_id": account_id, "removed_at_ms": removed_ms}],
            )
            for table in (comments, messages, crawl_runs):
                result = await conn.execute(
                    delete(table).where(
                        table.c.account_id == account_id, table.c.received_at <= until
                    )
                )
                done.rows[table.name] = max(0, result.rowcount or 0)
            # derived from the items: rebuilt by the batches that come after
            for table in (works, conversations):
                result = await conn.execute(delete(table).where(table.c.account_id == account_id))
                done.rows[table.name] = max(0, result.rowcount or 0)
        done.items = done.rows["comments"] + done.rows["messages"]
        return done

    async def prune(self, now: datetime | None = None) -> int:
        """Delete what is past retention; returns how many items went."""
        cutoff = self.cutoff(now)
        if cutoff is None:
            return 0
        await self.ready()
        gone = 0
        async with guarded(self.shown, "applying retention"), self.engine.begin() as conn:
            for table, column in (
                (comments, comments.c.created_at),
                (messages, messages.c.created_at),
                (crawl_runs, crawl_runs.c.crawled_at),
                (works, works.c.last_seen_at),
                (conversations, conversations.c.last_message_at),
            ):
                result = await conn.execute(delete(table).where(column < cutoff))
                if table is comments or table is messages:
                    gone += max(0, result.rowcount or 0)
        return gone

    # -- reading ---------------------------------------------------------------------

    def _readable(self) -> None:
        if self.missing is not None:
            raise DatabaseUnavailable(self.missing)

    async def ping(self) -> None:
        """Raises DatabaseUnavailable when the database does not answer."""
        self._readable()
        async with guarded(self.shown, "connecting"), self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    def _query(self, account_id: str, f: Filter) -> Select[Any]:
        table = ITEM_TABLES[f.kind]
        where: list[ColumnElement[bool]] = [table.c.account_id == account_id]
        if f.since is not None:
            where.append(table.c.created_at >= f.since)
        if f.work is not None:
            column = table.c.work_id if f.kind == "comment" else table.c.conversation_id
            where.append(column == f.work)
        if f.author is not None:
            who = table.c.author_id if f.kind == "comment" else table.c.sender_id
            where.append(or_(who == f.author, func.lower(table.c.author) == f.author.lower()))
        if f.grep:
            where.append(self._contains(table, f.grep))
        return select(table).where(and_(*where))

    def _contains(self, table: Table, needle: str) -> ColumnElement[bool]:
        """Text containing ``needle`` in any case: FTS5 trigram on SQLite (for 3+
        characters), pg_trgm-indexed ILIKE on PostgreSQL."""
        pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        if not self.sqlite:
            return table.c.text.ilike(pattern, escape="\\")
        if len(needle) < 3:
            return table.c.text.ilike(pattern, escape="\\")
        phrase = '"' + needle.replace('"', '""') + '"'
        fts = text(f"SELECT rowid FROM {table.name}_fts WHERE {table.name}_fts MATCH :phrase")
        rowids = fts.bindparams(phrase=phrase).columns(column("rowid", Integer))
        return table.c.id.in_(rowids.scalar_subquery())

    async def items(self, account_id: str, f: Filter) -> list[CrawledItem]:
        """The newest items matching ``f``, newest first."""
        table = ITEM_TABLES[f.kind]
        query = self._query(account_id, f).order_by(table.c.created_at.desc(), table.c.id.desc())
        if f.limit is not None:
            query = query.limit(f.limit)
        self._readable()
        async with guarded(self.shown, "reading crawled items"), self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_item(f.kind, r) for r in rows]

    async def export(
        self, account_id: str, f: Filter, page: int = 1000
    ) -> AsyncIterator[list[CrawledItem]]:
        """Every item matching ``f`` (its limit ignored), oldest first, a page at a time."""
        table = ITEM_TABLES[f.kind]
        after = 0
        while True:
            query = (
                self._query(account_id, f)
                .where(table.c.id > after)
                .order_by(table.c.id)
                .limit(page)
            )
            self._readable()
            async with guarded(self.shown, "exporting"), self.engine.connect() as conn:
                rows = (await conn.execute(query)).mappings().all()
            if not rows:
                return
            after = rows[-1]["id"]
            yield [_item(f.kind, r) for r in rows]

    async def counts(self, account_ids: Iterable[str]) -> dict[str, Counts]:
        """Each account's counts and last crawl, in a few grouped queries."""
        ids = sorted(set(account_ids))
        if not ids:
            return {}
        found: dict[str, dict[str, Any]] = {a: {} for a in ids}
        self._readable()
        async with guarded(self.shown, "counting crawled data"), self.engine.connect() as conn:
            for name, table in (
                ("comments", comments),
                ("dms", messages),
                ("works", works),
                ("conversations", conversations),
            ):
                query = (
                    select(table.c.account_id, func.count())
                    .where(table.c.account_id.in_(ids))
                    .group_by(table.c.account_id)
                )
                for account_id, n in (await conn.execute(query)).all():
                    found[account_id][name] = n
            runs = (
                select(
                    crawl_runs.c.account_id,
                    func.count(),
                    func.count(crawl_runs.c.error),
                    func.max(crawl_runs.c.crawled_at).filter(crawl_runs.c.error.is_(None)),
                )
                .where(crawl_runs.c.account_id.in_(ids))
                .group_by(crawl_runs.c.account_id)
            )
            for account_id, n, errors, last in (await conn.execute(runs)).all():
                found[account_id].update(crawl_runs=n, errors=errors, last_crawl_at=last)
        out = {}
        for account_id, values in found.items():
            last = values.get("last_crawl_at")
            if isinstance(last, str):  # SQLite's aggregate skips the column type
                last = datetime.fromisoformat(last).replace(tzinfo=UTC)
            values["last_crawl_at"] = last
            out[account_id] = Counts(**values)
        return out

    async def holds(self, account_id: str) -> bool:
        """Whether any crawled data of the account is stored."""
        c = (await self.counts([account_id]))[account_id]
        return bool(c.comments or c.dms or c.crawl_runs)


def _received(arrival: Arrival) -> datetime:
    return _ms(arrival.received_ms) if arrival.received_ms else datetime.now(UTC)


def _row(account_id: str, item: CrawledItem, received: datetime) -> dict[str, Any]:
    x = item.extra
    row: dict[str, Any] = {
        "account_id": account_id,
        "item_id": _clean(item.item_id),
        "author": _clean(item.author),
        "text": _clean(item.text),
        "created_at": item.created_at,
        "raw": _raw(item),
        "received_at": received,
    }
    if item.kind == "comment":
        row.update(
            work_id=_clip_id(x.get("work_id")),
            parent_id=_clip_id(x.get("parent_id")),
            author_id=_clip_id(x.get("user_id") or x.get("author_id")),
            like_count=_count(x.get("digg_count", x.get("like_count"))),
            reply_count=_count(x.get("reply_count")),
        )
    else:
        direction = x.get("direction")
        row.update(
            conversation_id=_clip_id(x.get("conversation_id")),
            sender_id=_clip_id(x.get("sender_id") or x.get("author_id")),
            direction=direction if direction in ("in", "out") else None,
        )
    return row


def _peer(
    peers: dict[tuple[str, str], dict[str, Any]], account_id: str, row: dict[str, Any]
) -> None:
    key = (account_id, row["conversation_id"])
    known = peers.get(key)
    incoming = row["direction"] != "out"
    entry = {
        "account_id": account_id,
        "conversation_id": row["conversation_id"],
        "peer_id": row["sender_id"] if incoming else None,
        "peer": row["author"] if incoming else "",
        "last_message_at": row["created_at"],
    }
    if known is None:
        peers[key] = entry
        return
    known["last_message_at"] = max(known["last_message_at"], entry["last_message_at"])
    if incoming:
        known["peer_id"], known["peer"] = entry["peer_id"], entry["peer"]


def _item(kind: Kind, row: Mapping[str, Any]) -> CrawledItem:
    """The item as the worker sent it (its raw payload); the columns when that does
    not validate (written by something else than hiscrm)."""
    try:
        return CrawledItem.model_validate(row["raw"])
    except (ValidationError, TypeError):
        return CrawledItem(
            kind=kind,
            item_id=str(row["item_id"]),
            text=str(row["text"]),
            author=str(row["author"]),
            created_at=row["created_at"],
        )
