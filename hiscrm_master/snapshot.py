"""Everything ``hiscrm diagnose`` judges, collected from Redis in a few round trips."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hiscrm_bus.accounts import AccountConfig, AccountStore, decode_hash, validate
from hiscrm_bus.connection import call, text
from hiscrm_bus.errors import InvalidAccountConfig
from hiscrm_bus.messages import CrawledItem
from hiscrm_bus.pending import Outcome, PendingTracker, PendingUpdate
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import TaskReport, WorkerInfo, WorkerRegistry

from .ingest import CrawlStats, IngestStore

RECENT = 3


@dataclass(frozen=True)
class AccountView:
    id: str
    config: AccountConfig | None
    raw: dict[str, Any]
    invalid: str | None
    pending: list[PendingUpdate]
    stats: CrawlStats
    # updates that ended badly (failed or rejected), newest first, from recent outcomes
    unsuccessful: list[Outcome] = field(default_factory=list)
    # the newest version an ACK confirmed applied (recent outcomes; 0: none seen)
    acked_version: int = 0
    recent_comments: list[CrawledItem] = field(default_factory=list)
    recent_dms: list[CrawledItem] = field(default_factory=list)


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


async def collect(redis: Redis, settings: BusSettings, account_id: str | None = None) -> Snapshot:
    keys = settings.keys
    store = AccountStore(redis, keys)
    tracker = PendingTracker(redis, settings)
    ingest = IngestStore(redis, keys)
    seconds, micros = await call(redis.time())
    now = float(seconds) + float(micros) / 1e6
    ids = [account_id] if account_id else await store.ids()
    bad_outcomes: dict[str, list[Outcome]] = {}
    acked: dict[str, int] = {}
    for outcome in await tracker.recent_outcomes():
        if outcome.status != "applied":
            bad_outcomes.setdefault(outcome.account_id, []).append(outcome)
        else:
            acked[outcome.account_id] = max(acked.get(outcome.account_id, 0), outcome.version)
    raws = await store.get_each(ids)
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
                pending=await tracker.of_account(aid),
                stats=await ingest.stats(aid),
                unsuccessful=bad_outcomes.get(aid, [])[:RECENT],
                acked_version=acked.get(aid, 0),
                recent_comments=await ingest.newest(aid, "comments", RECENT),
                recent_dms=await ingest.newest(aid, "dms", RECENT),
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
        master_overdue_s=await _master_overdue(redis, keys.masters, now),
        dead_letters=await _dead_letters(redis, keys.deadletter_counts),
        settings={
            "ack_timeout_s": settings.ack_timeout_s,
            "heartbeat_interval_s": float(getattr(settings, "heartbeat_interval_s", 2.0)),
            "reconcile_interval_s": float(getattr(settings, "reconcile_interval_s", 30.0)),
        },
    )


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
