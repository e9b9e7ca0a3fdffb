"""The rules of ``hiscrm diagnose``: pure functions over a collected Snapshot, each
finding with a concrete remedy. Nothing here touches Redis."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hiscrm_bus.messages import CrawledItem
from hiscrm_bus.scripts import REPLICA_WAIT_MS

from .snapshot import AccountView, Snapshot, WorkerView

Severity = Literal["problem", "info"]
# how a task error caused by the site's shape or a refusal of it begins
DRIFT_PREFIXES = ("platform_changed:", "platform_error:")


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    remedy: str
    severity: Severity = "problem"

    def doc(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class AccountReport:
    id: str
    platform: str | None
    worker: str | None
    login_status: str | None
    platform_user_id: str | None
    config_version: int | None
    applied_version: int | None
    task_state: str | None
    task_error: str | None
    pending_updates: list[dict[str, Any]]
    # from the database (None: not asked, or it did not answer)
    comments: int | None
    dms: int | None
    last_crawl_at: str | None
    unsuccessful_updates: list[dict[str, Any]] = field(default_factory=list)
    recent_comments: list[dict[str, Any]] = field(default_factory=list)
    recent_dms: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Finding] = field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = [p.doc() for p in self.problems]
        return d


@dataclass
class Diagnosis:
    accounts: list[AccountReport]
    workers: list[dict[str, Any]]
    problems: list[Finding]

    @property
    def healthy(self) -> bool:
        return not any(
            f.severity == "problem"
            for f in self.problems + [p for a in self.accounts for p in a.problems]
        )

    def doc(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "accounts": [a.doc() for a in self.accounts],
            "workers": self.workers,
            "problems": [p.doc() for p in self.problems],
        }


def diagnose(snap: Snapshot) -> Diagnosis:
    accounts = [account_report(snap, view) for view in snap.accounts]
    problems = fleet_findings(snap) + cluster_findings(snap) + database_findings(snap)
    return Diagnosis(accounts, worker_reports(snap), problems)


def worker_reports(snap: Snapshot) -> list[dict[str, Any]]:
    owned: dict[str, list[str]] = {}
    for view in snap.accounts:
        if view.config and view.config.worker_id:
            owned.setdefault(view.config.worker_id, []).append(view.id)
    out = []
    for wid, worker in sorted(snap.workers.items()):
        out.append(
            {
                "id": wid,
                "alive": worker.alive,
                "heartbeat_age_s": _age(snap, worker),
                "accounts": sorted(owned.get(wid, [])),
                "platforms": list(worker.info.platforms) if worker.info else [],
                "capacity": worker.info.capacity if worker.info else None,
                "version": (worker.info.version or None) if worker.info else None,
            }
        )
    return out


def _age(snap: Snapshot, worker: WorkerView) -> float | None:
    return round(snap.now - worker.last_heartbeat, 1) if worker.last_heartbeat else None


def fleet_findings(snap: Snapshot) -> list[Finding]:
    found = []
    if snap.master_overdue_s is None and snap.accounts:
        found.append(
            Finding(
                "no_master",
                "no Master has ever run on this Redis",
                "start one: `hiscrm master`",
            )
        )
    elif snap.master_overdue_s is not None and snap.master_overdue_s > 0:
        found.append(
            Finding(
                "no_master",
                f"no Master has been alive for {snap.master_overdue_s:.0f} s past its own deadline",
                "start one: `hiscrm master` (updates stay pending until a Master runs)",
            )
        )
    live_platforms = {p for w in snap.workers.values() if w.info for p in w.info.platforms}
    wanted = sorted({v.config.platform for v in snap.accounts if v.config})
    for platform in wanted:
        if platform not in live_platforms:
            found.append(
                Finding(
                    "no_worker_for_platform",
                    f"no worker alive for platform {platform}",
                    f"start a worker that supports {platform}: `hiscrm worker`",
                )
            )
    for source, count in sorted(snap.dead_letters.items()):
        found.append(
            Finding(
                "dead_letters",
                f"{count} message(s) from {source} were dead-lettered "
                "(undecodable, or refused: not_owner / wrong_sender)",
                'inspect them: `redis-cli -u "$HISCRM_REDIS_URL" XRANGE <prefix>deadletter - + '
                "COUNT 10` (what workers reported: `<prefix>deadletter:reported`)",
                "info",
            )
        )
    return found


CLUSTER_SLOTS = 16384


def cluster_findings(snap: Snapshot) -> list[Finding]:
    """On a Redis Cluster: nodes down, primaries a failover would lose, slots no live
    primary serves."""
    if snap.cluster is None:
        return []
    found = []
    for node in snap.cluster:
        if node.down:
            found.append(
                Finding(
                    "redis_node_down",
                    f"Redis node {node.address} ({node.role}) is down",
                    "restart it: it rejoins the cluster (as a replica, if its replica took "
                    "over meanwhile)",
                )
            )
    live_replicas = {n.primary for n in snap.cluster if n.role == "replica" and not n.down}
    alone = [
        n
        for n in snap.cluster
        if n.role == "primary" and n.slots and not n.down and n.address not in live_replicas
    ]
    for node in alone:
        found.append(
            Finding(
                "redis_primary_without_replica",
                f"Redis primary {node.address} has no live replica: a failover of it would "
                "lose its data, and each config write to it waits "
                f"{REPLICA_WAIT_MS / 1000:g} s for a replica before it returns",
                "restart its replica, or add one (a node with cluster-enabled, then "
                "CLUSTER REPLICATE <this primary's node id>)",
            )
        )
    served = sum(n.slots for n in snap.cluster if n.role == "primary" and not n.down)
    if served < CLUSTER_SLOTS:
        found.append(
            Finding(
                "redis_slots_uncovered",
                f"{CLUSTER_SLOTS - served} of {CLUSTER_SLOTS} slots have no live primary: "
                "the accounts and workers in them cannot be read or written",
                "restart the nodes that are down (a replica takes over within the node "
                "timeout); if a primary and all its replicas are lost: "
                "`redis-cli --cluster fix`",
            )
        )
    return found


# crawl batches waiting this long for a Master to store them mean ingestion is behind
INGEST_BEHIND_S = 60.0


def database_findings(snap: Snapshot) -> list[Finding]:
    """Whether the crawled-data database answers, and whether ingestion keeps up."""
    db = snap.database
    if db is None:
        return []
    found = []
    if db.error is not None:
        found.append(
            Finding(
                "database_unreachable",
                f"the crawled-data database {db.url} does not answer: {db.error}",
                "start it or fix HISCRM_DATABASE_URL; crawl batches wait in Redis meanwhile "
                "(up to HISCRM_STREAM_MAXLEN per worker)",
            )
        )
    if db.backlog and db.backlog_age_s >= INGEST_BEHIND_S:
        found.append(
            Finding(
                "ingest_behind",
                f"{db.backlog} crawl batch(es) wait to be stored in the database, the oldest "
                f"for {db.backlog_age_s:.0f} s",
                "check that a Master runs and reaches the database (its log names the error)",
            )
        )
    return found


def account_report(snap: Snapshot, view: AccountView) -> AccountReport:
    cfg = view.config
    owner = cfg.worker_id if cfg else view.raw.get("worker_id")
    worker = snap.workers.get(owner) if owner else None
    task = worker.task(view.id) if worker else None
    report = AccountReport(
        id=view.id,
        platform=cfg.platform if cfg else view.raw.get("platform"),
        worker=owner,
        login_status=cfg.login_status if cfg else view.raw.get("login_status"),
        platform_user_id=cfg.platform_user_id if cfg else view.raw.get("platform_user_id"),
        config_version=cfg.config_version if cfg else None,
        applied_version=task.applied_version if task else None,
        task_state=task.state if task else None,
        task_error=task.error if task else None,
        pending_updates=[
            {
                "update_id": p.update_id,
                "version": p.version,
                "attempts": p.attempts,
                "age_s": round(max(0.0, snap.now - p.created_at_ms / 1000), 1),
            }
            for p in view.pending
        ],
        comments=view.stats.comments if view.stats else None,
        dms=view.stats.dms if view.stats else None,
        last_crawl_at=(
            view.stats.last_crawl_at.isoformat()
            if view.stats and view.stats.last_crawl_at
            else None
        ),
        unsuccessful_updates=[
            {
                "update_id": o.update_id,
                "version": o.version,
                "status": o.status,
                "attempts": o.attempts,
                "error": o.error,
            }
            for o in view.unsuccessful
        ],
        recent_comments=[_item(i) for i in view.recent_comments],
        recent_dms=[_item(i) for i in view.recent_dms],
    )
    report.problems = account_findings(snap, view, worker)
    return report


def _item(item: CrawledItem) -> dict[str, Any]:
    return {
        "id": item.item_id,
        "created_at": item.created_at.isoformat(),
        "author": item.author,
        "text": item.text,
    }


def account_findings(snap: Snapshot, view: AccountView, worker: WorkerView | None) -> list[Finding]:
    aid = view.id
    cfg = view.config
    if cfg is None:
        repair = (
            f"remove it and add it again: `hiscrm account remove {aid}`"
            if view.unreadable
            else f"repair it: `hiscrm account set {aid} FIELD=VALUE`"
        )
        return [
            Finding(
                "invalid_config",
                f"the stored config of {aid} does not validate: {view.invalid}",
                repair,
            )
        ]
    found: list[Finding] = []
    task = worker.task(aid) if worker is not None else None
    # what the worker runs: its heartbeat lags, the ACKs do not
    applied = max(task.applied_version if task else 0, view.acked_version)
    if cfg.config_stale and applied < cfg.config_version:
        found.append(
            Finding(
                "config_stale",
                f"an update to {aid} was given up after its last retry",
                f"check worker {cfg.worker_id}, then send any change with "
                f"`hiscrm account set {aid} FIELD=VALUE --wait`",
            )
        )
    if cfg.worker_id is None:
        found.append(
            Finding(
                "unassigned",
                f"{aid} has no worker",
                f"start a worker for {cfg.platform} and a Master; the Master assigns one",
            )
        )
        return found
    if worker is None or not worker.alive:
        age = (
            f" (last heartbeat {_age(snap, worker):.0f} s ago)"
            if worker and worker.last_heartbeat
            else ""
        )
        found.append(
            Finding(
                "worker_offline",
                f"worker {cfg.worker_id} of {aid} is not alive{age}",
                f"start it: `hiscrm worker --id {cfg.worker_id}`; a running Master moves "
                "its accounts to a live worker once its heartbeat expires",
            )
        )
        return found
    if not cfg.enabled:
        found.append(
            Finding(
                "disabled",
                f"{aid} is disabled",
                f"enable it: `hiscrm account set {aid} enabled=true`",
                "info",
            )
        )
        return found
    reconcile = snap.settings.get("reconcile_interval_s", 30.0)
    oldest = max((snap.now - p.created_at_ms / 1000 for p in view.pending), default=0.0)
    # a change younger than an ACK deadline plus a heartbeat is in flight, not behind
    grace = snap.settings.get("ack_timeout_s", 5.0) + 2 * snap.settings.get(
        "heartbeat_interval_s", 2.0
    )
    changed = cfg.updated_at.timestamp() if cfg.updated_at else 0.0
    in_flight = snap.now - changed < grace
    if task is None:
        found.append(
            Finding(
                "no_task",
                f"worker {cfg.worker_id} runs no task for {aid} yet",
                f"it reconciles within {reconcile:.0f} s; if not, restart it",
            )
        )
    elif applied < cfg.config_version and not in_flight:
        behind = f" for {oldest:.0f} s" if oldest else ""
        found.append(
            Finding(
                "version_behind",
                f"worker {cfg.worker_id} has not applied version {cfg.config_version} "
                f"of {aid}{behind} (it runs version {task.applied_version})",
                "its control subscription may be down; it will reconcile within "
                f"{reconcile:.0f} s, or restart it: `hiscrm worker --id {cfg.worker_id}`",
            )
        )
    if cfg.login_status == "expired":
        found.append(
            Finding(
                "login_expired",
                f"the platform no longer accepts the session of {aid}: its crawler waits "
                "for a new login",
                f"log it in again: `hiscrm login {aid}`",
            )
        )
    elif not cfg.platform_user_id:
        found.append(
            Finding(
                "not_logged_in",
                f"{aid} has no platform_user_id: its crawler waits for a login",
                f"log it in: `hiscrm login {aid}`",
            )
        )
    elif (
        task is not None and task.state == "error" and (task.error or "").startswith(DRIFT_PREFIXES)
    ):
        found.append(
            Finding(
                "platform_changed",
                f"the crawler of {aid} does not understand what the site sent: {task.error}",
                "the site changed: update hiscrm_worker/platforms/douyin_api.py "
                "(its addresses, envelopes and parsers)",
            )
        )
    elif task is not None and task.state == "error":
        found.append(
            Finding(
                "task_error",
                f"the task of {aid} failed: {task.error}",
                f"if the session expired, log in again: `hiscrm login {aid}`; "
                "else see the worker's log",
            )
        )
    retried = [p for p in view.pending if p.attempts > 1]
    if retried:
        found.append(
            Finding(
                "update_retrying",
                f"{len(retried)} update(s) to {aid} are being retried "
                f"(attempt {max(p.attempts for p in retried)})",
                f"worker {cfg.worker_id} is not ACKing: check its log and connection to Redis",
            )
        )
    return found
