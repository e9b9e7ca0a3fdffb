"""Redis names: unchanged on one Redis (deployments upgrade in place, operators' redis-cli
habits hold), hash-tagged on a cluster so that each script call's keys share a slot."""

from __future__ import annotations

from collections import Counter

from redis.crc import key_slot

from hiscrm_bus.keys import CLUSTER_BUCKETS, WORKER_GROUPS, Keys

# what every name was before the cluster layout existed: a deployment's keys must not move
SINGLE_NODE = {
    "account": ("account", "a1", "hiscrm:account:a1"),
    "session": ("session", "a1", "hiscrm:account:a1:session"),
    "account_pending": ("account_pending", "a1", "hiscrm:account:a1:pending"),
    "worker": ("worker", "w1", "hiscrm:worker:w1"),
    "worker_accounts": ("worker_accounts", "w1", "hiscrm:worker:w1:accounts"),
    "control": ("control", "w1", "hiscrm:worker:w1:control"),
    "update": ("update", "u1", "hiscrm:update:u1"),
    "login": ("login", "s1", "hiscrm:login:s1"),
}


def test_single_node_names_are_what_they_always_were() -> None:
    keys = Keys()
    for method, arg, expected in SINGLE_NODE.values():
        assert getattr(keys, method)(arg) == expected
    assert keys.worker_stream("w1", "acks") == "hiscrm:worker:w1:out:acks"
    assert [keys.accounts(), keys.unassigned(), keys.pending(), keys.outcomes()] == [
        "hiscrm:accounts",
        "hiscrm:unassigned",
        "hiscrm:pending",
        "hiscrm:outcomes",
    ]
    assert [keys.stats(), keys.policy(), keys.workers, keys.masters] == [
        "hiscrm:stats",
        "hiscrm:policy",
        "hiscrm:workers",
        "hiscrm:masters",
    ]
    assert list(keys.buckets) == [0] and list(keys.groups) == [0]
    assert keys.bucket("anything") == 0 and keys.group("anything") == 0


def test_on_a_cluster_an_accounts_keys_and_its_bucket_indexes_share_one_slot() -> None:
    keys = Keys(cluster=True)
    for account in ("a1", "acc-42", "账号-7", "x" * 128):
        b = keys.bucket(account)
        names = [
            keys.account(account),
            keys.session(account),
            keys.account_pending(account),
            keys.update("u1", b),
            keys.accounts(b),
            keys.unassigned(b),
            keys.worker_accounts("w1", b),
            keys.pending(b),
            keys.outcomes(b),
            keys.stats(b),
            keys.policy(b),
        ]
        assert len({key_slot(n.encode()) for n in names}) == 1, names
        assert names[0] == f"hiscrm:{{b{b}}}:account:{account}"


def test_on_a_cluster_a_workers_hash_channel_and_streams_share_one_slot() -> None:
    keys = Keys(cluster=True)
    for worker in ("w1", "worker-2", "w" * 64):
        names = [keys.worker(worker), keys.control(worker)]
        names += [keys.worker_stream(worker, kind) for kind in ("acks", "events", "ingest")]
        assert len({key_slot(n.encode()) for n in names}) == 1, names


def test_buckets_and_groups_spread_over_slots_and_accounts_spread_over_buckets() -> None:
    keys = Keys(cluster=True)
    bucket_slots = {key_slot(keys.pending(b).encode()) for b in keys.buckets}
    group_slots = {key_slot(keys.worker(f"w{n}").encode()) for n in range(1000)}
    assert len(bucket_slots) == CLUSTER_BUCKETS  # a slot per bucket
    assert len(group_slots) == WORKER_GROUPS
    # three primaries each own a third of the slots: each gets a fair share of buckets
    thirds = Counter(slot * 3 // 16384 for slot in bucket_slots)
    assert min(thirds.values()) >= CLUSTER_BUCKETS // 6
    # 10,000 accounts: no bucket gets twice its share
    per_bucket = Counter(keys.bucket(f"acc-{n}") for n in range(10_000))
    assert len(per_bucket) == CLUSTER_BUCKETS
    assert max(per_bucket.values()) < 2 * 10_000 / CLUSTER_BUCKETS
