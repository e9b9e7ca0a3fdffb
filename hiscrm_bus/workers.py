"""The worker registry: each worker's heartbeat hash (with a TTL) and the heartbeat index.

A worker whose hash expired is dead; its id stays in the index until the Master has
moved its accounts elsewhere. A worker's Redis user may add to the index, so an index
member that is no worker id (``ID_PATTERN``: ``w1:out:x`` names a key, not a worker)
is ignored, told once, and removed by a registry that ``prunes`` (the Master's).

Every value is bounded as read: a worker's Redis user may write its own hash, and the
console re-renders it every few seconds. A task's error is clipped to
``MAX_REASON_CHARS``, the host, version and instance to a label's length, and the JSON
fields (``tasks``, ``platforms``) over their size are left out with one log line.

On a Redis Cluster the hash (in its worker group's slot) and the index (untagged) live
in different slots, so no transaction holds both: a heartbeat writes the hash and its
TTL atomically, then the index. Reads of many hashes are plain pipelines, which
redis-py's cluster client splits per node.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from redis import exceptions as rexc
from redis.asyncio import Redis

from .accounts import ID_PATTERN
from .connection import call, call_each, is_cluster, text
from .keys import Keys
from .limits import (
    MAX_MESSAGE_BYTES,
    MAX_REASON_CHARS,
    TooLarge,
    clip,
    dumps,
    loads,
    utcnow,
)
from .messages import TaskState

log = logging.getLogger(__name__)

# a host name (DNS allows 253), and a version or instance id
MAX_HOST_CHARS: Final = 255
MAX_LABEL_CHARS: Final = 100
# the platforms a worker crawls: few, short names
MAX_PLATFORMS: Final = 64
MAX_PLATFORM_CHARS: Final = 64
MAX_PLATFORMS_BYTES: Final = 8 * 1024
# every task's report, as one JSON field (a worker of 1,000 accounts whose errors are
# all of MAX_REASON_CHARS CJK characters stays under it)
MAX_TASKS_BYTES: Final = MAX_MESSAGE_BYTES
_JSON_LIMITS: Final = {"platforms": MAX_PLATFORMS_BYTES, "tasks": MAX_TASKS_BYTES}
_TEXT_LIMITS: Final = {
    "host": MAX_HOST_CHARS,
    "version": MAX_LABEL_CHARS,
    "instance": MAX_LABEL_CHARS,
}


class TaskReport(BaseModel):
    """What a worker says about one monitor task in its heartbeat."""

    model_config = ConfigDict(frozen=True)

    applied_version: int = 0
    state: TaskState = "starting"
    error: str | None = None
    crawls: int = 0
    items: int = 0
    # new items the last crawl saw but left for later ones (max_items_per_crawl)
    items_left: int = 0
    last_crawl_at: datetime | None = None

    @field_validator("error")
    @classmethod
    def _clip_error(cls, value: str | None) -> str | None:
        return clip(value) if value else value


Platform = Annotated[str, StringConstraints(max_length=MAX_PLATFORM_CHARS)]


class WorkerInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    host: str = ""
    pid: int = 0
    version: str = ""
    capacity: int = Field(50, ge=0)
    platforms: tuple[Platform, ...] = Field((), max_length=MAX_PLATFORMS)
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    subscriptions: int = 0
    # which process holds the id: a worker id is a lease, one process at a time
    instance: str = ""
    tasks: dict[str, TaskReport] = Field(default_factory=dict)

    @field_validator("host", "version", "instance")
    @classmethod
    def _clip_label(cls, value: str, info: ValidationInfo) -> str:
        return clip(value, MAX_HOST_CHARS if info.field_name == "host" else MAX_LABEL_CHARS)

    def supports(self, platform: str) -> bool:
        return platform in self.platforms


# the hash's fields as read: their sizes are looked at first (HSTRLEN), and a field over
# its limit is not transferred at all (a 60 MB ``tasks`` cost every reader 60 MB, every
# pass); a text field's limit is generous: it is clipped to a label as read
_FIELDS: Final = tuple(name for name in WorkerInfo.model_fields if name != "id")


def _read_limit(name: str) -> int:
    return _JSON_LIMITS.get(name, MAX_MESSAGE_BYTES)


# (worker id, field) logged as too large and not back within its limit since: a console
# reads the registry every few seconds and a heartbeat changes the value's size, so one
# line per field while it stays too large (bounded: cleared when full)
_logged_oversized: set[tuple[str, str]] = set()


def _oversized(worker_id: str, name: str, size: int, exc: TooLarge) -> None:
    if (worker_id, name) in _logged_oversized:
        return
    if len(_logged_oversized) >= 1024:
        _logged_oversized.clear()
    _logged_oversized.add((worker_id, name))
    log.warning("worker %s: registry field %s is too large (%s); ignored", worker_id, name, exc)


def _within(worker_id: str, name: str) -> None:
    """The field is within its limit again: a later excess is told again."""
    _logged_oversized.discard((worker_id, name))


# index members already told about as no worker id (bounded: cleared when full)
_logged_invalid: set[str] = set()


def valid_worker_id(name: str) -> bool:
    """``name`` can be a worker's id (what a worker's settings accept)."""
    return re.fullmatch(ID_PATTERN, name) is not None


def _invalid_member(name: str, removed: bool) -> None:
    if name in _logged_invalid:
        return
    if len(_logged_invalid) >= 1024:
        _logged_invalid.clear()
    _logged_invalid.add(name)
    log.warning(
        "worker index: %r is not a worker id; ignored%s",
        clip(name, MAX_LABEL_CHARS),
        " and removed" if removed else "",
    )


def _label(value: bytes | str, limit: int) -> str:
    """A text field of the hash in at most ``limit`` characters, of which no more than
    could be shown is decoded (no character is more than 4 bytes)."""
    if len(value) <= 4 * limit:
        return clip(text(value), limit)
    marker = f"… ({len(value)} {'bytes' if isinstance(value, bytes) else 'chars'})"
    return text(value[: 4 * limit])[: max(limit - len(marker), 0)] + marker


def _from_hash(worker_id: str, raw: Mapping[Any, Any]) -> WorkerInfo:
    """The worker as its registry hash describes it. Never raises: the id comes from the
    key, and a field (or one task) that does not decode or validate is left out, so a
    damaged entry still reports a live worker with what could be read. Sizes are
    checked before anything is decoded."""
    d: dict[str, Any] = {}
    for key, value in raw.items():
        name = text(key)
        if name not in WorkerInfo.model_fields:
            continue
        if name in _JSON_LIMITS:
            try:
                d[name] = loads(value, max_bytes=_JSON_LIMITS[name])
                _within(worker_id, name)
            except TooLarge as exc:
                _oversized(worker_id, name, len(value), exc)
            except ValueError:
                log.debug("worker %s: registry field %s is not JSON; ignored", worker_id, name)
            continue
        d[name] = _label(value, _TEXT_LIMITS.get(name, MAX_REASON_CHARS))
    d["id"] = worker_id
    while True:  # each round leaves out at least one thing, or gives up
        try:
            return WorkerInfo.model_validate(d)
        except (ValidationError, RecursionError) as exc:
            if not _drop_invalid(worker_id, d, exc):
                return WorkerInfo(id=worker_id)


def _drop_invalid(worker_id: str, d: dict[str, Any], exc: Exception) -> bool:
    """Remove what ``exc`` names as invalid from ``d``: one task of ``tasks`` when the
    error is inside it, else the whole field. False when nothing could be removed."""
    errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else []
    dropped = False
    for err in errors:
        loc = err["loc"]
        name = str(loc[0]) if loc else ""
        if name == "id" or name not in d:
            continue
        tasks = d[name]
        if name == "tasks" and len(loc) > 1 and isinstance(tasks, dict):
            if loc[1] in tasks:  # (a task with two errors is named twice)
                log.debug("worker %s: task %s in the registry is invalid", worker_id, loc[1])
                del tasks[loc[1]]
                dropped = True
            continue
        log.debug("worker %s: registry field %s is invalid; ignored", worker_id, name)
        del d[name]
        dropped = True
    return dropped


class WorkerRegistry:
    def __init__(self, redis: Redis, keys: Keys, *, prune: bool = False) -> None:
        self.redis = redis
        self.keys = keys
        # remove index members that are no worker id (the Master; readers only skip them)
        self.prune = prune

    async def _index(self, *, withscores: bool) -> list[tuple[str, float]]:
        """The index's members that are worker ids, with their heartbeat (0.0 without
        ``withscores``), oldest first."""
        key = self.keys.workers
        members: Any = await call(self.redis.zrange(key, 0, -1, withscores=withscores))
        found: list[tuple[str, float]] = []
        invalid: list[Any] = []
        for member in members:
            raw, score = member if withscores else (member, 0.0)
            name = text(raw)
            if valid_worker_id(name):
                found.append((name, float(score)))
            else:
                invalid.append(raw)
        if invalid:
            removed = False
            if self.prune:
                try:
                    await call(self.redis.zrem(self.keys.workers, *invalid))
                    removed = True
                except rexc.ResponseError as exc:  # NOPERM: read on, skipping them
                    log.debug("worker index: cannot remove invalid members: %s", exc)
            for raw in invalid:
                _invalid_member(text(raw), removed)
        return found

    async def heartbeat(self, info: WorkerInfo, ttl_s: float) -> None:
        """Write the worker's hash with a fresh TTL and bump it in the index (atomically
        on one Redis; on a cluster the hash first, then the index)."""
        now = utcnow()
        data = info.model_dump(mode="json", exclude={"heartbeat_at"})
        fields = {
            k: (dumps(v) if isinstance(v, list | dict) else str(v))
            for k, v in data.items()
            if v is not None
        }
        fields["heartbeat_at"] = now.isoformat()
        key = self.keys.worker(info.id)
        cluster = is_cluster(self.redis)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.pexpire(key, int(ttl_s * 1000))
            if not cluster:
                pipe.zadd(self.keys.workers, {info.id: now.timestamp()})
            await call(pipe.execute())
        if cluster:
            # after the hash: an id in the index without a hash would read as a dead
            # worker; a hash not yet indexed is only a worker seen one beat later
            await call(self.redis.zadd(self.keys.workers, {info.id: now.timestamp()}))

    async def all(self) -> tuple[list[WorkerInfo], list[tuple[str, float]]]:
        """(alive workers, [(dead worker id, last heartbeat epoch)]) in one round trip each."""
        index = await self._index(withscores=True)
        raws = await self._read([worker_id for worker_id, _score in index])
        alive, dead = [], []
        for (worker_id, score), raw in zip(index, raws, strict=True):
            if raw is None:  # no hash (or another type there): no live worker
                dead.append((worker_id, score))
            else:
                alive.append(_from_hash(worker_id, raw))
        return alive, dead

    async def _read(self, worker_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each worker's registry hash (None: none, or a key of another type), in two
        round trips: every field's size first, then the fields within their limits
        (one over its limit is left out with one log line)."""
        if not worker_ids:
            return []
        n = len(_FIELDS)
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in worker_ids:
                key = self.keys.worker(worker_id)
                pipe.exists(key)
                for name in _FIELDS:
                    pipe.hstrlen(key, name)
            sizes = await call_each(pipe.execute(raise_on_error=False))
        wanted: list[list[str] | None] = []
        for i, worker_id in enumerate(worker_ids):
            exists, *lengths = sizes[i * (n + 1) : (i + 1) * (n + 1)]
            if exists != 1 or any(isinstance(x, Exception) for x in lengths):
                wanted.append(None)
                continue
            fields: list[str] = []
            for name, size in zip(_FIELDS, lengths, strict=True):
                if size > _read_limit(name):
                    _oversized(
                        worker_id, name, size, TooLarge(f"{size} bytes (limit {_read_limit(name)})")
                    )
                else:
                    _within(worker_id, name)
                    if size:
                        fields.append(name)
            wanted.append(fields)
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id, asked in zip(worker_ids, wanted, strict=True):
                if asked:
                    pipe.hmget(self.keys.worker(worker_id), asked)
            values = iter(await call_each(pipe.execute(raise_on_error=False)))
        out: list[dict[str, Any] | None] = []
        for names in wanted:
            if names is None:
                out.append(None)
                continue
            got = next(values) if names else []
            if isinstance(got, Exception):  # changed type meanwhile
                out.append(None)
                continue
            # a hash that expired meanwhile reads as all nil: still the worker seen alive
            out.append({k: v for k, v in zip(names, got, strict=True) if v is not None})
        return out

    async def claim(self, info: WorkerInfo, ttl_s: float) -> WorkerInfo | None:
        """Take the worker id for ``info.instance``, unless another live process holds
        it: then return that holder (its host and pid say where it runs). The lease is
        the registry hash itself, so it ends when that worker's heartbeat expires."""
        key = self.keys.worker(info.id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "instance", info.instance)
            pipe.pexpire(key, int(ttl_s * 1000), nx=True)  # only a hash we just made
            pipe.hgetall(key)
            _set, _ttl, raw = await call(pipe.execute())
        holder = _from_hash(info.id, raw)
        if holder.instance in (info.instance, ""):
            return None
        return holder

    async def take_over(self, info: WorkerInfo) -> None:
        """Hold the id although the hash names another instance (one known dead)."""
        await call(self.redis.hset(self.keys.worker(info.id), "instance", info.instance))

    async def release(self, info: WorkerInfo) -> None:
        """Give the id up on a clean stop, so it can start elsewhere at once (the hash
        stays until its TTL: the Master still sees the last heartbeat)."""
        await call(self.redis.hdel(self.keys.worker(info.id), "instance"))

    async def ids(self) -> list[str]:
        """Every worker id in the index, alive or not."""
        return [worker_id for worker_id, _score in await self._index(withscores=False)]

    async def alive(self, worker_ids: Sequence[str]) -> set[str]:
        """Those of ``worker_ids`` whose registry hash exists now, in one round trip."""
        ids = [w for w in worker_ids if valid_worker_id(w)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in ids:
                pipe.exists(self.keys.worker(worker_id))
            found = await call_each(pipe.execute(raise_on_error=False))
        return {w for w, n in zip(ids, found, strict=True) if n == 1}

    async def get(self, worker_id: str) -> WorkerInfo | None:
        """One worker, read with HGETALL: the one read of its hash its own Redis user
        may make (``hiscrm health worker``); sizes are checked as decoded. The fleet's
        reads (:meth:`all`) look at sizes before they transfer anything."""
        raw = await call(self.redis.hgetall(self.keys.worker(worker_id)))
        return _from_hash(worker_id, raw) if raw else None

    async def read(self, worker_id: str) -> WorkerInfo | None:
        """One worker, its sizes looked at before anything is transferred, as the
        fleet's reads (:meth:`all`): for a reader other than the worker itself."""
        (raw,) = await self._read([worker_id])
        return _from_hash(worker_id, raw) if raw is not None else None

    async def forget(self, *worker_ids: str) -> None:
        """Drop dead workers from the index (once their accounts have moved)."""
        if worker_ids:
            await call(self.redis.zrem(self.keys.workers, *worker_ids))
