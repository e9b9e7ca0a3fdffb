"""Everything ``hiscrm diagnose`` judges, collected from Redis in a few round trips, and
from the crawled-data database when one is given (its counts, the newest items, whether
it answers; how far ingestion is behind is read from Redis)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hiscrm_bus.accounts import AccountConfig, AccountStore, decode_hash, validate
from hiscrm_bus.connection import call, is_cluster, text
from hiscrm_bus.errors import InvalidAccountConfig
from hiscrm_bus.keys import Keys
from hiscrm_bus.messages import CrawledItem
from hiscrm_bus.pending import Outcome, PendingTracker, PendingUpdate
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import entry_parts
from hiscrm_bus.workers import TaskReport, WorkerInfo, WorkerRegistry

from .database import DatabaseUnavailable

if TYPE_CHECKING:  # SQLAlchemy loads when the database is used, not with every command
    from .archive import Archive, Counts, Filter

RECENT = 3


@dataclass(frozen=True)
class AccountView:
    id: str
    config: AccountConfig | None
    raw: dict[str, Any]
    invalid: str | None
    pending: list[PendingUpdate]
    stats: Counts | None  # None: the database was not asked, or did not answer
    # updates that ended badly (failed or rejected), newest first, from recent outcomes
    unsuccessful: list[Outcome] = field(default_factory=list)
    # the newest version an ACK confirmed applied (recent outcomes; 0: none seen)
    acked_version: int = 0
    recent_comments: list[CrawledItem] = field(default_factory=list)
    recent_dms: list[CrawledItem] = field(default_factory=list)
    # its key holds no hash (overwritten with another type): nothing in it to repair
    unreadable: bool = False


@dataclass(frozen=True)
class WorkerView:
    id: str
    info: WorkerInfo | None  # None: heartbeat expired
    last_heartbeat: float  # epoch seconds

    @property
    def alive(self) -> bool:
        return self.info is not None

    def task(self, account_id: str) -> TaskReport | None:
        return self.info.tasks.get(account_id) if self.info else None


@dataclass(frozen=True)
class Snapshot:
    now: float  # epoch seconds, Redis' clock
    accounts: list[AccountView]
    workers: dict[str, WorkerView]
    # seconds since the last running Master's own liveness deadline passed (<= 0: one
    # runs; None: no Master ever ran on this Redis)
    master_overdue_s: float | None
    dead_letters: dict[str, int] = field(default_factory=dict)
    settings: dict[str, float] = field(default_factory=dict)
    database: DatabaseView | None = None  # None: not asked
    # the newest outcomes of the fleet's updates, newest first (what the verdicts on
    # unsuccessful and acknowledged updates were read from)
    outcomes: list[Outcome] = field(default_factory=list)
    # on a Redis Cluster, every node as CLUSTER NODES lists it (None: one Redis)
    cluster: list[ClusterNodeView] | None = None


@dataclass(frozen=True)
class ClusterNodeView:
    """One node of a Redis Cluster as the node diagnose asked sees it."""

    address: str  # host:port
    role: Literal["primary", "replica"]
    down: bool  # flagged fail (or fail?: suspected by the node asked)
    primary: str | None  # a replica's primary (its address)
    slots: int  # how many slots it serves


@dataclass(frozen=True)
class DatabaseView:
    """The crawled-data database as diagnose sees it."""

    url: str  # password masked
    error: str | None  # why it did not answer; None: it did
    # crawl batches the workers sent that no Master has stored yet, and the age of the
    # oldest of them (Redis' clock)
    backlog: int = 0
    backlog_age_s: float = 0.0


async def collect(
    redis: Redis,
    settings: BusSettings,
    account_id: str | None = None,
    archive: Archive | None = None,
) -> Snapshot:
    keys = settings.keys
    store = AccountStore(redis, keys)
    tracker = PendingTracker(redis, settings)
    seconds, micros = await call(redis.time())
    now = float(seconds) + float(micros) / 1e6
    ids = [account_id] if account_id else await store.ids()
    bad_outcomes: dict[str, list[Outcome]] = {}
    acked: dict[str, int] = {}
    outcomes = await tracker.recent_outcomes()
    for outcome in outcomes:
        if outcome.status != "applied":
            bad_outcomes.setdefault(outcome.account_id, []).append(outcome)
        else:
            acked[outcome.account_id] = max(acked.get(outcome.account_id, 0), outcome.version)
    raws = await store.get_each(ids)
    present = [a for a, r in zip(ids, raws, strict=True) if r]
    database: DatabaseView | None = None
    counts: dict[str, Counts] = {}
    recent: dict[tuple[str, str], list[CrawledItem]] = {}
    if archive is not None:
        database, counts, recent = await _database(redis, settings, archive, present, now)
    pending = await tracker.of_accounts(present)
    accounts = []
    for aid, raw in zip(ids, raws, strict=True):
        if not raw:
            continue
        config, invalid = None, None
        if isinstance(raw, Exception):  # e.g. the key was overwritten with a string
            decoded: dict[str, Any] = {}
            invalid = f"its hash cannot be read: {raw}"
        else:
            decoded = decode_hash(raw)
            try:
                config = validate(decoded)
            except InvalidAccountConfig as exc:
                invalid = str(exc)
        accounts.append(
            AccountView(
                id=aid,
                config=config,
                raw=decoded,
                invalid=invalid,
                pending=pending.get(aid, []),
                stats=counts.get(aid),
                unsuccessful=bad_outcomes.get(aid, [])[:RECENT],
                acked_version=acked.get(aid, 0),
                recent_comments=recent.get((aid, "comment"), []),
                recent_dms=recent.get((aid, "dm"), []),
                unreadable=isinstance(raw, Exception),
            )
        )
    alive, dead = await WorkerRegistry(redis, keys).all()
    workers = {
        w.id: WorkerView(w.id, w, w.heartbeat_at.timestamp() if w.heartbeat_at else 0.0)
        for w in alive
    }
    workers.update({wid: WorkerView(wid, None, last) for wid, last in dead})
    # owners that never registered at all
    for view in accounts:
        owner = view.config.worker_id if view.config else None
        if owner and owner not in workers:
            workers[owner] = WorkerView(owner, None, 0.0)
    return Snapshot(
        now=now,
        accounts=accounts,
        workers=workers,
        cluster=await _cluster(redis),
        master_overdue_s=await _master_overdue(redis, keys.masters, now),
        dead_letters=await _dead_letters(redis, keys.deadletter_counts),
        database=database,
        outcomes=outcomes,
        settings={
            "ack_timeout_s": settings.ack_timeout_s,
            "heartbeat_interval_s": float(getattr(settings, "heartbeat_interval_s", 2.0)),
            "reconcile_interval_s": float(getattr(settings, "reconcile_interval_s", 30.0)),
        },
    )


async def _cluster(redis: Redis) -> list[ClusterNodeView] | None:
    """Every node of the cluster, or None on one Redis."""
    if not is_cluster(redis):
        return None
    listed: Any = await call(cast(Any, redis).cluster_nodes())
    address_of = {str(info.get("node_id")): str(addr) for addr, info in listed.items()}
    nodes = []
    for addr, info in sorted(listed.items()):
        flags = set(str(info.get("flags", "")).split(","))
        if flags & {"handshake", "noaddr"}:
            continue
        slots = sum(int(end) - int(start) + 1 for start, end in _slot_ranges(info))
        nodes.append(
            ClusterNodeView(
                address=str(addr),
                role="primary" if "master" in flags else "replica",
                down=bool(flags & {"fail", "fail?"}),
                primary=address_of.get(str(info.get("master_id"))),
                slots=slots,
            )
        )
    return nodes


def _slot_ranges(info: dict[str, Any]) -> list[tuple[str, str]]:
    """(start, end) of every slot range a parsed CLUSTER NODES entry lists."""
    out = []
    for part in info.get("slots") or []:
        start, _sep, end = (part if isinstance(part, str) else "-".join(part)).partition("-")
        if start.isdigit():
            out.append((start, end if end.isdigit() else start))
    return out


async def _master_overdue(redis: Redis, key: str, now: float) -> float | None:
    """How far past the latest Master deadline we are (None: no Master ever ran). Each
    Master sets its own deadline from its own liveness interval, so this verdict does
    not depend on the settings of whoever runs diagnose."""
    try:
        newest: Any = await call(redis.zrange(key, -1, -1, withscores=True))
    except ResponseError:
        return None
    return now - float(newest[0][1]) if newest else None


async def _dead_letters(redis: Redis, key: str) -> dict[str, int]:
    raw: dict[Any, Any] = await call(redis.hgetall(key))
    counts = {}
    for k, v in raw.items():
        try:
            counts[text(k)] = int(v)
        except ValueError:
            continue
    return counts


async def _database(
    redis: Redis, settings: BusSettings, archive: Archive, ids: list[str], now: float
) -> tuple[DatabaseView, dict[str, Counts], dict[tuple[str, str], list[CrawledItem]]]:
    """The database's view: counts and newest items of ``ids`` (the newest only when
    one account is asked about), or why it did not answer; and the ingest backlog."""
    backlog, age = await ingest_backlog(redis, settings, now)
    url = archive.shown
    from .archive import KINDS, Filter

    counts: dict[str, Counts] = {}
    recent: dict[tuple[str, str], list[CrawledItem]] = {}
    try:
        await archive.ping()
        counts = await archive.counts(ids)
        if len(ids) == 1:
            for kind in KINDS.values():
                f = Filter(kind=kind, limit=RECENT)
                recent[(ids[0], kind)] = await archive.items(ids[0], f)
    except DatabaseUnavailable as exc:
        return DatabaseView(url, str(exc), backlog, age), {}, {}
    except Exception as exc:  # e.g. a schema no Master created yet
        return DatabaseView(url, f"{type(exc).__name__}: {exc}", backlog, age), {}, {}
    return DatabaseView(url, None, backlog, age), counts, recent


async def ingest_backlog(redis: Redis, settings: BusSettings, now: float) -> tuple[int, float]:
    """Crawl batches on the workers' ingest streams that the Masters' group has not
    acknowledged (read and pending, or not read yet), and the age in seconds of the
    oldest of them."""
    keys = settings.keys
    group = str(getattr(settings, "consumer_group", "masters"))
    members: list[Any] = await call(redis.zrange(keys.workers, 0, -1))
    ids = [text(w) for w in members]
    if not ids:
        return 0, 0.0
    streams = [keys.worker_stream(w, "ingest") for w in ids]
    async with redis.pipeline(transaction=False) as pipe:
        for stream in streams:
            pipe.xinfo_groups(stream)
        infos = await call(pipe.execute(raise_on_error=False))
    total, oldest = 0, None
    async with redis.pipeline(transaction=False) as pipe:
        asked = []
        for stream, info in zip(streams, infos, strict=True):
            if isinstance(info, Exception):
                continue  # no stream yet (nothing crawled)
            mine = next((g for g in info if text(g.get("name") or "") == group), None)
            if mine is None:
                continue
            pending, lag = int(mine.get("pending") or 0), mine.get("lag")
            unread = int(lag) if lag is not None else 0
            total += pending + unread
            if pending:
                pipe.xpending(stream, group)
                asked.append("pending")
            if unread:
                last = text(mine.get("last-delivered-id") or "0-0")
                pipe.xrange(stream, min=f"({last}", count=1)
                asked.append("unread")
        replies = await call(pipe.execute(raise_on_error=False)) if asked else []
    for kind, reply in zip(asked, replies, strict=True):
        if isinstance(reply, Exception) or not reply:
            continue
        first = reply.get("min") if kind == "pending" else reply[0][0]
        if first:
            ms = entry_parts(text(first))[0]
            oldest = ms if oldest is None else min(oldest, ms)
    age = max(0.0, now - oldest / 1000) if oldest is not None else 0.0
    return total, age


@dataclass(frozen=True)
class AccountData:
    """Everything ``hiscrm data`` shows of one account."""

    account_id: str
    exists: bool  # its config hash exists (crawled data may outlive it: --keep-data)
    items: list[CrawledItem]  # the newest matching the filter, newest first
    counts: Counts
    worker_id: str | None  # the owner the config names
    worker_alive: bool
    task: TaskReport | None  # the owner's last heartbeat report of the account's task

    @property
    def known(self) -> bool:
        """The account exists, or crawled data of it is kept."""
        c = self.counts
        return self.exists or bool(c.comments or c.dms or c.crawl_runs)


async def account_data(
    redis: Redis, keys: Keys, archive: Archive, account_id: str, f: Filter
) -> AccountData:
    """The account's items matching ``f`` from the database, its counts there, and its
    last crawl as its owner reports it in its heartbeat (Redis)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(keys.account(account_id))
        pipe.hget(keys.account(account_id), "worker_id")
        exists, owner = await call(pipe.execute())
    worker_id = text(owner) if owner else None
    worker = await WorkerRegistry(redis, keys).get(worker_id) if worker_id else None
    counts = await archive.counts([account_id])
    return AccountData(
        account_id=account_id,
        exists=bool(exists),
        items=await archive.items(account_id, f),
        counts=counts[account_id],
        worker_id=worker_id,
        worker_alive=worker is not None,
        task=worker.tasks.get(account_id) if worker else None,
    )
