"""The product on a Redis Cluster: real ``hiscrm master`` / ``hiscrm worker`` processes
on a local 3-primary, 3-replica cluster (tests/redis_cluster.py), given nothing but a
``redis+cluster://`` URL: the seed's scenario, a fleet-wide change spread over every
shard, and a primary killed mid-workload with nothing lost."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from hiscrm_bus.accounts import MISSING_USER_ID
from tests.e2e.stack import Stack, running_stack, wait_for
from tests.redis_cluster import RedisCluster, running_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e_cluster")]

_n = itertools.count()


def cluster_url(cluster: RedisCluster) -> str:
    """The URL an operator writes: every node (any one would do)."""
    return cluster.cluster_url


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with running_cluster(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


@pytest.fixture
def stack(cluster: RedisCluster, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(cluster_url(cluster), f"c{next(_n)}:", tmp_path) as s:
        yield s


def import_accounts(stack: Stack, tmp_path: Path, ids: dict[str, str]) -> None:
    """Add the accounts (id -> worker) with one ``hiscrm account import``."""
    path = tmp_path / "accounts.csv"
    rows = "".join(f"{a},synthetic,{w},0.2\n" for a, w in ids.items())
    path.write_text("id,platform,worker,interval\n" + rows)
    stack.cli("account", "import", str(path), check=True)


def shards_holding(stack: Stack, cluster: RedisCluster, account_ids: list[str]) -> set[int]:
    """The primaries (ports) that hold these accounts' hashes."""
    slots = {key_slot(stack.keys.account(a).encode()) for a in account_ids}
    return {
        node.port
        for node in cluster.nodes
        if node.role == "primary" and any(lo <= s <= hi for s in slots for lo, hi in node.slots)
    }


def test_seed_scenario_on_a_cluster(stack: Stack) -> None:
    stack.master()
    w1 = stack.worker("w1")
    stack.add("acc-1")
    task = stack.wait_task("w1", "acc-1", "waiting_login")
    assert task["error"] == MISSING_USER_ID

    result = stack.cli(
        "account",
        "login-success",
        "acc-1",
        "--platform-user-id",
        "1864722759",
        "--wait",
        "--timeout",
        "10",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "applied: version 2 by worker w1" in result.stdout
    assert stack.account("acc-1")["platform_user_id"] == "1864722759"
    stack.wait_task("w1", "acc-1", "running", version=2)
    assert w1.poll() is None  # hot-swapped, never restarted
    login = [o for o in stack.outcomes() if o["reason"] == "login_success"]
    assert [(o["status"], o["worker_id"], o["version"]) for o in login] == [("applied", "w1", "2")]
    assert stack.pending_count() == 0


def test_a_fleet_wide_change_reaches_every_shard(
    stack: Stack, cluster: RedisCluster, tmp_path: Path
) -> None:
    stack.master()
    stack.worker("w1")
    stack.worker("w2")
    ids = {f"acc-{n}": ("w1" if n % 2 else "w2") for n in range(40)}
    import_accounts(stack, tmp_path, ids)
    assert len(shards_holding(stack, cluster, list(ids))) == 3  # all three primaries
    for account_id, worker in ids.items():
        stack.wait_task(worker, account_id, "waiting_login")

    result = stack.cli("account", "set", "--all", "monitor_interval_s=0.3", "--wait")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("40/40 outcomes; last ACK after ")
    for account_id, worker in ids.items():
        assert stack.account(account_id)["monitor_interval_s"] == "0.3"
        stack.wait_task(worker, account_id, "waiting_login", version=2)
    applied = Counter(o["worker_id"] for o in stack.outcomes() if o["status"] == "applied")
    assert applied == {"w1": 40, "w2": 40}  # the imports' and the change's
    assert stack.pending_count() == 0
    listing = stack.cli("account", "list", check=True).stdout
    assert all(account_id in listing for account_id in ids)


def test_operator_commands_on_a_cluster(stack: Stack) -> None:
    stack.master()
    stack.worker("w1")
    stack.add("acc-1")
    stack.add("acc-2")
    stack.wait_task("w1", "acc-2", "waiting_login")
    shown = stack.cli("account", "show", "acc-1", check=True).stdout
    assert "acc-1" in shown and "w1" in shown
    seen = stack.cli("diagnose", "acc-1", "--json")
    doc = json.loads(seen.stdout)
    assert doc["accounts"][0]["id"] == "acc-1"
    assert [p for p in doc["problems"] if p["code"].startswith("redis_")] == []
    assert {w["id"] for w in doc["workers"]} == {"w1"}
    removed = stack.cli("account", "remove", "acc-2")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    wait_for(lambda: stack.task("w1", "acc-2") is None, what="acc-2's task stopped")
    listing = stack.cli("account", "list", check=True).stdout
    assert "acc-1" in listing and "acc-2" not in listing
    assert not stack.r.exists(stack.keys.account("acc-2"))


def fleet_of_two(stack: Stack, tmp_path: Path) -> dict[str, str]:
    """A Master, workers w1 and w2, 30 accounts split between them, each task running."""
    stack.master()
    stack.worker("w1")
    stack.worker("w2")
    ids = {f"acc-{n}": ("w1" if n % 2 else "w2") for n in range(30)}
    import_accounts(stack, tmp_path, ids)
    for account_id, worker in ids.items():
        stack.wait_task(worker, account_id, "waiting_login")
    return ids


def change_in_flight(stack: Stack) -> subprocess.Popen[bytes]:
    """``hiscrm account set --all … --wait``, started and left running."""
    args = ["account", "set", "--all", "name=during", "--wait", "--timeout", "30"]
    return subprocess.Popen(
        [sys.executable, "-m", "hiscrm_cli", "--log-level", "warning", *args],
        env=stack.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def assert_nothing_lost(stack: Stack, ids: dict[str, str]) -> None:
    """A last fleet change is applied by every owner, every update recorded ended with
    exactly one outcome, and none is left pending."""
    result = stack.cli("account", "set", "--all", "name=final", "--wait", "--timeout", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith(f"{len(ids)}/{len(ids)} outcomes")
    for account_id, worker in ids.items():
        assert stack.account(account_id)["name"] == "final"
        version = int(stack.account(account_id)["config_version"])
        stack.wait_task(worker, account_id, "waiting_login", version=version)
    wait_for(lambda: stack.pending_count() == 0, timeout=60, what="every update resolved")
    outcomes = Counter(o["update_id"] for o in stack.outcomes())
    assert max(outcomes.values()) == 1


def test_a_primary_killed_mid_workload_loses_no_update(tmp_path: Path) -> None:
    with (
        running_cluster(RedisCluster(tmp_path / "cluster")) as cluster,
        running_stack(cluster_url(cluster), "f:", tmp_path) as stack,
    ):
        ids = fleet_of_two(stack, tmp_path)
        # the primary holding the most of these accounts dies while a change goes out
        holders = Counter(cluster.owner_of(key_slot(stack.keys.account(a).encode())) for a in ids)
        victim = holders.most_common(1)[0][0]
        change = change_in_flight(stack)
        cluster.kill(victim)
        promoted = cluster.wait_failover(victim)
        change.communicate(timeout=60)
        assert_nothing_lost(stack, ids)
        # diagnose tells the operator what the failover left behind
        doc = json.loads(stack.cli("diagnose", "--json").stdout)
        found = {(p["code"], p["message"].split(" ")[2]) for p in doc["problems"]}
        assert ("redis_node_down", f"127.0.0.1:{victim}") in found
        assert ("redis_primary_without_replica", f"127.0.0.1:{promoted}") in found
        assert stack.procs["m1"].poll() is None
        stack.kill("w1", signal.SIGTERM)


def test_slots_resharded_mid_workload_lose_no_update(
    stack: Stack, cluster: RedisCluster, tmp_path: Path
) -> None:
    ids = fleet_of_two(stack, tmp_path)
    # move a third of the slots of the primary holding w1's channel, while a change runs
    source = cluster.owner_of(key_slot(stack.keys.control("w1").encode()))
    target = next(p for p in cluster.primaries() if p != source)
    change = change_in_flight(stack)
    cluster.reshard(source, target, 2000)
    # and w1's channel's own slot, wherever redis-cli's pick left it
    cluster.move_slot(key_slot(stack.keys.control("w1").encode()), target)
    change.communicate(timeout=60)
    assert_nothing_lost(stack, ids)
