"""Every Redis key, channel and stream name, under one configurable prefix.

No other module builds a Redis name.

On one Redis the names are plain (``hiscrm:account:a1``). On a Redis Cluster every
name that a Lua call touches together with others carries a hash tag, so that the
call's keys share one slot:

- **account buckets**: an account's hash, session, pending index and update records,
  and the indexes a write keeps beside them (``accounts``, ``unassigned``, each worker's
  ``accounts`` set, ``pending``, ``outcomes``, ``stats``, ``policy``) live in one of
  ``CLUSTER_BUCKETS`` buckets, ``hiscrm:{b<k>}:…`` with ``k = crc32(account id) % 64``.
  A fleet-wide index is the union of its buckets' parts.
- **worker groups**: a worker's registry hash, control channel and outgoing streams
  live in ``hiscrm:{w<g>}:…`` with ``g = crc32(worker id) % WORKER_GROUPS``, so one
  XREADGROUP per group reads every worker of the group.

Names no script combines (the workers' and Masters' indexes, logins, the console, the
dead letters, locks) carry no tag. With one Redis there is one bucket and one group,
and every name is what it was before the cluster existed.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

_MARK = "\x00id\x00"
# fixed for a deployment's lifetime: every process must place an account in the same
# bucket. 64 tags spread over the slots evenly enough for up to ~20 primaries.
CLUSTER_BUCKETS = 64
WORKER_GROUPS = 16
StreamKind = Literal["acks", "events", "ingest"]
STREAM_KINDS: tuple[StreamKind, ...] = ("acks", "events", "ingest")


def escape_glob(text: str) -> str:
    """``text`` as a literal inside a Redis glob pattern (KEYS, SCAN, ACL rules)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "hiscrm:"
    cluster: bool = False  # names for a Redis Cluster (hash-tagged, see above)

    # placement
    def bucket(self, account_id: str) -> int:
        """The bucket of ``account_id`` (always 0 on one Redis)."""
        if not self.cluster:
            return 0
        return zlib.crc32(account_id.encode("utf-8", "surrogatepass")) % CLUSTER_BUCKETS

    @property
    def buckets(self) -> range:
        """Every bucket: a fleet-wide index is the union of these buckets' parts."""
        return range(CLUSTER_BUCKETS if self.cluster else 1)

    def group(self, worker_id: str) -> int:
        """The worker group of ``worker_id`` (always 0 on one Redis)."""
        if not self.cluster:
            return 0
        return zlib.crc32(worker_id.encode("utf-8", "surrogatepass")) % WORKER_GROUPS

    @property
    def groups(self) -> range:
        """Every worker group."""
        return range(WORKER_GROUPS if self.cluster else 1)

    def in_bucket(self, bucket: int) -> str:
        """The head of every name in ``bucket`` (the prefix alone on one Redis)."""
        return f"{self.prefix}{{b{bucket}}}:" if self.cluster else self.prefix

    def _of_account(self, account_id: str) -> str:
        return self.in_bucket(self.bucket(account_id))

    def _of_worker(self, worker_id: str) -> str:
        return f"{self.prefix}{{w{self.group(worker_id)}}}:" if self.cluster else self.prefix

    # accounts
    def account(self, account_id: str) -> str:
        """Hash: one account's config, ``config_version`` and login state."""
        return f"{self._of_account(account_id)}account:{account_id}"

    def accounts(self, bucket: int = 0) -> str:
        """Set: the id of every account in ``bucket``."""
        return f"{self.in_bucket(bucket)}accounts"

    def unassigned(self, bucket: int = 0) -> str:
        """Set: ids of the accounts in ``bucket`` that no worker owns."""
        return f"{self.in_bucket(bucket)}unassigned"

    def session(self, account_id: str) -> str:
        """Hash: the account's browser session, sealed with the workers' session key
        (``blob``), its ``version`` and the worker that wrote it (``by``)."""
        return f"{self._of_account(account_id)}account:{account_id}:session"

    def account_pending(self, account_id: str, bucket: int | None = None) -> str:
        """Sorted set: the account's pending update ids scored by config version.
        ``bucket``: the account's, when a script builds the name from ids it reads
        (``split``); otherwise worked out from the id."""
        head = self._of_account(account_id) if bucket is None else self.in_bucket(bucket)
        return f"{head}account:{account_id}:pending"

    # workers
    def worker(self, worker_id: str) -> str:
        """Hash (with TTL): worker info, last heartbeat, applied versions and task states."""
        return f"{self._of_worker(worker_id)}worker:{worker_id}"

    @property
    def workers(self) -> str:
        """Sorted set: worker id by last heartbeat (epoch seconds)."""
        return f"{self.prefix}workers"

    def worker_accounts(self, worker_id: str, bucket: int = 0) -> str:
        """Set: ids of the accounts in ``bucket`` assigned to the worker."""
        return f"{self.in_bucket(bucket)}worker:{worker_id}:accounts"

    def control(self, worker_id: str) -> str:
        """Pub/sub channel (a shard channel on a cluster): Master → worker commands and
        config updates."""
        return f"{self._of_worker(worker_id)}worker:{worker_id}:control"

    # what a worker sends: streams only that worker's Redis user may append to, so
    # the stream a message was read from names its sender
    def worker_stream(self, worker_id: str, kind: StreamKind) -> str:
        """Stream: worker → Master messages of one kind (``acks``, ``events``, ``ingest``),
        read by the Masters' consumer group."""
        return f"{self._of_worker(worker_id)}worker:{worker_id}:out:{kind}"

    @property
    def masters(self) -> str:
        """Sorted set: Master id by the time (epoch seconds) after which, without another
        liveness pass, it counts as gone."""
        return f"{self.prefix}masters"

    def login(self, session_id: str) -> str:
        """Hash (with TTL): one QR login session's state as the Master saw it."""
        return f"{self.prefix}login:{session_id}"

    # the web console (hiscrm web): one tag on a cluster (a user and the user list are
    # written in one transaction)
    @property
    def _web(self) -> str:
        return f"{self.prefix}{{web}}:" if self.cluster else f"{self.prefix}web:"

    def web_user(self, name: str) -> str:
        """Hash: one console user: ``password`` (an argon2 hash), ``created_at``."""
        return f"{self._web}user:{name}"

    @property
    def web_users(self) -> str:
        """Set: every console user's name."""
        return f"{self._web}users"

    def web_session(self, token_hash: str) -> str:
        """Hash (with TTL): one signed-in console session, by the SHA-256 of its cookie:
        ``user``, ``csrf``."""
        return f"{self._web}session:{token_hash}"

    def web_attempts(self, who: str) -> str:
        """String (with TTL): failed sign-ins from one address, for the rate limit."""
        return f"{self._web}attempts:{who}"

    @property
    def removals(self) -> str:
        """Sorted set: removed account id by the removal's time on Redis' clock (epoch
        ms); a Master deletes the account's crawled data from the database, then the
        entry."""
        return f"{self.prefix}removals"

    # where versions before the database kept crawled items (migrated on a Master's
    # first start, then deleted)
    def legacy_items(self, account_id: str, kind: str) -> str:
        """Sorted set (legacy): the newest crawled item ids of one kind."""
        return f"{self.prefix}account:{account_id}:{kind}"

    def legacy_item_bodies(self, account_id: str, kind: str) -> str:
        """Hash (legacy): item id → the item as JSON."""
        return f"{self.prefix}account:{account_id}:{kind}:bodies"

    def legacy_crawl_stats(self, account_id: str) -> str:
        """Hash (legacy): per-account counts of stored items and the last crawl time."""
        return f"{self.prefix}account:{account_id}:crawl"

    def legacy_item_bodies_pattern(self, kind: str) -> str:
        """SCAN pattern of every account's :meth:`legacy_item_bodies` of ``kind``."""
        return escape_glob(f"{self.prefix}account:") + "*" + escape_glob(f":{kind}:bodies")

    def legacy_account_of(self, bodies_key: str, kind: str) -> str | None:
        """The account id in a :meth:`legacy_item_bodies` key, None for another key."""
        head, tail = f"{self.prefix}account:", f":{kind}:bodies"
        if bodies_key.startswith(head) and bodies_key.endswith(tail):
            return bodies_key[len(head) : -len(tail)] or None
        return None

    @property
    def deadletter(self) -> str:
        """Stream: messages that failed to decode, with the reason and raw bytes."""
        return f"{self.prefix}deadletter"

    @property
    def deadletter_reported(self) -> str:
        """Stream: what workers reported they could not decode (their own dead letters,
        apart, so that no worker's reports evict the Masters' own)."""
        return f"{self.prefix}deadletter:reported"

    @property
    def deadletter_counts(self) -> str:
        """Hash: dead-lettered message count per source stream or channel (a worker's
        reports: per worker)."""
        return f"{self.prefix}deadletter:counts"

    # pending updates and outcomes (each in the bucket of the update's account)
    def pending(self, bucket: int = 0) -> str:
        """Sorted set: pending update ids by deadline (epoch milliseconds)."""
        return f"{self.in_bucket(bucket)}pending"

    def update(self, update_id: str, bucket: int = 0) -> str:
        """Hash: one config update, its attempts and, once known, its outcome."""
        return f"{self.in_bucket(bucket)}update:{update_id}"

    def outcomes(self, bucket: int = 0) -> str:
        """Stream: one entry per update outcome (applied, rejected, failed)."""
        return f"{self.in_bucket(bucket)}outcomes"

    def policy(self, bucket: int = 0) -> str:
        """Hash: the Masters' delivery policy (``ack_timeout_ms``, ``retry_backoff``,
        ``max_attempts``), which every writer of an update records it under (a copy in
        every bucket)."""
        return f"{self.in_bucket(bucket)}policy"

    def stats(self, bucket: int = 0) -> str:
        """Hash: counters (updates sent, applied, rejected, retried, failed)."""
        return f"{self.in_bucket(bucket)}stats"

    def split(self, builder: Callable[[str], str]) -> tuple[str, str]:
        """(head, tail) around the id of a per-id name, for Lua scripts that build names
        from ids they read: ``head .. id .. tail == builder(id)``."""
        head, found, tail = builder(_MARK).partition(_MARK)
        if not found:
            raise ValueError("builder must place the id in the name")
        return head, tail

    def lock(self, name: str) -> str:
        """String with TTL: a short lease so only one Master runs a sweep at a time."""
        return f"{self.prefix}lock:{name}"
