"""The diagnose rules, case by case, on hand-built snapshots (no Redis)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.pending import PendingUpdate
from hiscrm_bus.workers import TaskReport, WorkerInfo
from hiscrm_master.archive import Counts
from hiscrm_master.diagnosis import diagnose
from hiscrm_master.snapshot import (
    AccountView,
    ClusterNodeView,
    DatabaseView,
    Snapshot,
    WorkerView,
)

NOW = 1_800_000_000.0


def account(**changes: object) -> AccountView:
    base = dict(
        id="acc-1",
        platform="douyin",
        worker_id="w1",
        platform_user_id="1864722759",
        login_status="logged_in",
        config_version=3,
    )
    base.update(changes)
    cfg = AccountConfig.model_validate(base)
    return AccountView(
        "acc-1", cfg, {}, None, [], Counts(comments=5, dms=1, last_crawl_at=datetime.now(UTC))
    )


def worker(
    state: str = "running", applied: int = 3, alive: bool = True, **task: object
) -> WorkerView:
    tasks = {"acc-1": TaskReport(applied_version=applied, state=state, **task)}  # type: ignore[arg-type]
    info = WorkerInfo(id="w1", platforms=("douyin",), tasks=tasks) if alive else None
    return WorkerView("w1", info, NOW - 1)


def snap(
    view: AccountView,
    *workers: WorkerView,
    master_overdue: float | None = -5.0,
    database: DatabaseView | None = None,
) -> Snapshot:
    return Snapshot(
        NOW,
        [view],
        {w.id: w for w in workers},
        master_overdue,
        settings={"reconcile_interval_s": 30},
        database=database,
    )


def codes(s: Snapshot) -> list[str]:
    d = diagnose(s)
    return [p.code for p in d.problems] + [p.code for a in d.accounts for p in a.problems]


def test_healthy_fleet_is_all_green() -> None:
    d = diagnose(snap(account(), worker()))
    assert d.healthy and codes(snap(account(), worker())) == []
    doc = d.doc()
    (a,) = doc["accounts"]
    assert (a["config_version"], a["applied_version"], a["task_state"]) == (3, 3, "running")
    assert (a["comments"], a["dms"]) == (5, 1)
    assert doc["workers"][0] == {
        "id": "w1",
        "alive": True,
        "heartbeat_age_s": 1.0,
        "accounts": ["acc-1"],
        "platforms": ["douyin"],
        "capacity": 50,
        "version": None,  # a worker that did not say which hiscrm it runs
    }


def test_missing_platform_user_id_says_to_log_in() -> None:
    s = snap(account(platform_user_id=None, login_status="not_logged_in"), worker("waiting_login"))
    d = diagnose(s)
    (finding,) = d.accounts[0].problems
    assert finding.code == "not_logged_in"
    assert "hiscrm login acc-1" in finding.remedy
    assert not d.healthy


def test_worker_behind_the_hash_version() -> None:
    view = account()
    view.pending.append(
        PendingUpdate(
            "u1", "acc-1", "w1", 3, "admin_update", (), 1, "pending", int((NOW - 40) * 1000), 0
        )
    )
    (finding,) = diagnose(snap(view, worker(applied=2))).accounts[0].problems
    assert finding.code == "version_behind"
    assert "worker w1 has not applied version 3 of acc-1 for 40 s" in finding.message
    assert "reconcile within 30 s" in finding.remedy
    assert diagnose(snap(view, worker(applied=2))).accounts[0].pending_updates[0]["age_s"] == 40


def test_dead_worker_and_no_worker_for_the_platform() -> None:
    s = snap(account(), worker(alive=False))
    assert codes(s) == ["no_worker_for_platform", "worker_offline"]
    d = diagnose(s)
    assert "no worker alive for platform douyin" in d.problems[0].message
    assert "hiscrm worker --id w1" in d.accounts[0].problems[0].remedy


def test_unassigned_account() -> None:
    assert codes(snap(account(worker_id=None), worker())) == ["unassigned"]


def test_no_master_running() -> None:
    assert codes(snap(account(), worker(), master_overdue=120)) == ["no_master"]
    assert codes(snap(account(), worker(), master_overdue=None)) == ["no_master"]


def test_task_error_and_stale_config_and_retries() -> None:
    view = account(config_stale=True)
    view.pending.append(
        PendingUpdate("u1", "acc-1", "w1", 3, "admin_update", (), 3, "pending", int(NOW * 1000), 0)
    )
    s = snap(view, worker("error", applied=2, error="douyin: status_code 8"))
    assert codes(s) == ["config_stale", "version_behind", "task_error", "update_retrying"]


def test_stale_mark_of_an_account_applied_at_its_version_is_not_reported() -> None:
    """The worker caught up by reconciling: the mark is history, not a problem."""
    assert codes(snap(account(config_stale=True), worker(applied=3))) == []


def test_a_change_in_flight_is_not_behind() -> None:
    """Right after `set --wait` printed applied, the heartbeat may still show the old
    version: a change younger than an ACK deadline plus a heartbeat is not reported."""
    just_now = datetime.fromtimestamp(NOW - 1, UTC)
    assert codes(snap(account(updated_at=just_now), worker(applied=2))) == []
    long_ago = datetime.fromtimestamp(NOW - 60, UTC)
    assert codes(snap(account(updated_at=long_ago), worker(applied=2))) == ["version_behind"]


def test_an_ack_proves_the_version_applied_before_the_heartbeat_does() -> None:
    view = account(updated_at=datetime.fromtimestamp(NOW - 60, UTC))
    view = AccountView(**{**view.__dict__, "acked_version": 3})
    assert codes(snap(view, worker(applied=2))) == []


def test_disabled_account_is_information_not_a_problem() -> None:
    d = diagnose(snap(account(enabled=False), worker("disabled")))
    assert [p.code for p in d.accounts[0].problems] == ["disabled"]
    assert d.healthy


def test_invalid_stored_config() -> None:
    view = AccountView(
        "acc-1",
        None,
        {"platform": "douyin", "worker_id": "w1"},
        "monitor_interval_s='soon'",
        [],
        Counts(),
    )
    d = diagnose(snap(view, worker()))
    (finding,) = d.accounts[0].problems
    assert finding.code == "invalid_config" and "hiscrm account set acc-1" in finding.remedy


def test_dead_letters_are_reported_as_information() -> None:
    s = snap(account(), worker())
    s.dead_letters["hiscrm:acks"] = 2
    d = diagnose(s)
    assert [(p.code, p.severity) for p in d.problems] == [("dead_letters", "info")]
    assert d.healthy


def test_an_expired_login_names_its_remedy() -> None:
    d = diagnose(snap(account(login_status="expired"), worker("waiting_login")))
    (finding,) = d.accounts[0].problems
    assert finding.code == "login_expired" and "hiscrm login acc-1" in finding.remedy


def test_a_site_that_changed_is_its_own_finding() -> None:
    error = "platform_changed: /aweme/v1/creator/comment/list/ lacks comment_info_list"
    d = diagnose(snap(account(), worker("error", error=error)))
    (finding,) = d.accounts[0].problems
    assert finding.code == "platform_changed" and "douyin_api.py" in finding.remedy


URL = "postgresql+asyncpg://crm:***@db.internal:5432/hiscrm"


def test_a_database_that_answers_and_keeps_up_is_no_finding() -> None:
    assert codes(snap(account(), worker(), database=DatabaseView(URL, None))) == []
    # a backlog younger than a minute is ingestion at work, not behind
    young = DatabaseView(URL, None, backlog=40, backlog_age_s=59.0)
    assert diagnose(snap(account(), worker(), database=young)).healthy


def test_a_database_that_does_not_answer_names_itself_and_the_remedy() -> None:
    down = DatabaseView(URL, f"database {URL} unavailable while connecting: refused")
    d = diagnose(snap(account(), worker(), database=down))
    (finding,) = d.problems
    assert finding.code == "database_unreachable" and not d.healthy
    assert finding.message.startswith(f"the crawled-data database {URL} does not answer: ")
    assert "HISCRM_DATABASE_URL" in finding.remedy
    assert d.accounts[0].task_state == "running"  # the rest of the report is there


def test_batches_waiting_over_a_minute_are_ingest_behind() -> None:
    behind = DatabaseView(URL, None, backlog=7, backlog_age_s=125.4)
    (finding,) = diagnose(snap(account(), worker(), database=behind)).problems
    assert finding.code == "ingest_behind"
    assert finding.message == (
        "7 crawl batch(es) wait to be stored in the database, the oldest for 125 s"
    )
    # both, when the database is down and the batches pile up
    both = DatabaseView(URL, "refused", backlog=7, backlog_age_s=125.4)
    assert codes(snap(account(), worker(), database=both)) == [
        "database_unreachable",
        "ingest_behind",
    ]


def cluster_of(*, down: tuple[str, ...] = (), failed_over: bool = False) -> list[ClusterNodeView]:
    """Three primaries (a, b, c) with a replica each (a2, b2, c2); ``down`` nodes flagged
    failed; ``failed_over``: a is down and a2 serves its slots."""
    slots = {"a": 5461, "b": 5461, "c": 5462}
    nodes = []
    for name, count in slots.items():
        primary, replica = f"{name}:1", f"{name}2:1"
        if failed_over and name == "a":
            nodes.append(ClusterNodeView(primary, "replica", True, replica, 0))
            nodes.append(ClusterNodeView(replica, "primary", False, None, count))
            continue
        nodes.append(ClusterNodeView(primary, "primary", primary in down, None, count))
        nodes.append(ClusterNodeView(replica, "replica", replica in down, primary, 0))
    return nodes


def on_cluster(nodes: list[ClusterNodeView]) -> Snapshot:
    return replace(snap(account(), worker()), cluster=nodes)


def test_a_healthy_cluster_is_all_green() -> None:
    assert codes(on_cluster(cluster_of())) == []
    assert codes(snap(account(), worker())) == []  # one Redis: no cluster findings


def test_a_replica_down_leaves_its_primary_alone() -> None:
    found = diagnose(on_cluster(cluster_of(down=("b2:1",)))).problems
    assert [(f.code, f.message) for f in found] == [
        ("redis_node_down", "Redis node b2:1 (replica) is down"),
        (
            "redis_primary_without_replica",
            "Redis primary b:1 has no live replica: a failover of it would lose its data, "
            "and each config write to it waits 1 s for a replica before it returns",
        ),
    ]


def test_a_primary_down_before_its_failover_leaves_slots_uncovered() -> None:
    assert codes(on_cluster(cluster_of(down=("c:1",)))) == [
        "redis_node_down",
        "redis_slots_uncovered",
    ]
    (_down, uncovered) = diagnose(on_cluster(cluster_of(down=("c:1",)))).problems
    assert uncovered.message.startswith("5462 of 16384 slots have no live primary")


def test_after_a_failover_the_promoted_replica_is_alone() -> None:
    found = diagnose(on_cluster(cluster_of(failed_over=True))).problems
    assert [(f.code, f.message.split(" ")[2]) for f in found] == [
        ("redis_node_down", "a:1"),
        ("redis_primary_without_replica", "a2:1"),
    ]
