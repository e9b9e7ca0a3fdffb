"""The account configuration: its model, its Redis hash codec, and versioned atomic writes.

Every change to an account goes through :class:`AccountStore`, which validates first
and then writes the changed fields and bumps ``config_version`` in one Lua call, so a
reader never sees fields without the version that announces them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError
from redis.asyncio import Redis

from .connection import CONNECTION_ERRORS, call, is_transient
from .errors import (
    AccountExists,
    AccountNotFound,
    BusUnavailable,
    InvalidAccountConfig,
    NotOwner,
    VersionConflict,
)
from .keys import Keys
from .limits import MAX_FIELD_BYTES, MAX_REASON_CHARS, check_depth, clip, loads
from .messages import dumps, utcnow

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
LoginStatus = Literal["not_logged_in", "logged_in", "expired", "failed"]
LOGIN_STATUSES: tuple[LoginStatus, ...] = get_args(LoginStatus)
MISSING_USER_ID = "Account missing platform_user_id - please login first to obtain douyin_id"
# every platform a worker can run, and so every value ``platform`` may take: the worker's
# registry (hiscrm_worker.platforms) builds exactly these (a test keeps the two equal)
PLATFORMS: tuple[str, ...] = ("sandbox", "douyin", "synthetic")


def unknown_platform(name: str) -> str:
    """The one sentence for a platform name that is not in :data:`PLATFORMS`."""
    return f"{name!r} is not a known platform ({', '.join(PLATFORMS)})"


class AccountConfig(BaseModel):
    """One account as the worker runs it. Stored as the Redis hash ``account:<id>``."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(pattern=ID_PATTERN)
    platform: str
    name: str = Field("", max_length=200)
    worker_id: str | None = Field(None, pattern=ID_PATTERN)
    enabled: bool = True
    login_status: LoginStatus = "not_logged_in"
    platform_user_id: str | None = Field(None, min_length=1, max_length=200)
    user_info: dict[str, Any] = Field(default_factory=dict)
    monitor_interval_s: float = Field(30.0, ge=0.05, le=86_400)
    crawl_comments: bool = True
    crawl_dms: bool = True
    max_items_per_crawl: int = Field(50, ge=1, le=1000)
    proxy: str | None = Field(None, max_length=500)
    config_version: int = Field(0, ge=0)
    updated_at: datetime | None = None
    # status, not configuration: set when an update to this account was given up
    config_stale: bool = False

    @field_validator("platform")
    @classmethod
    def _known_platform(cls, value: str) -> str:
        if value not in PLATFORMS:
            # no "Value error, " prefix: describe() shows the field and value before it
            known = ", ".join(PLATFORMS)
            raise PydanticCustomError("platform", f"not a known platform ({known})")
        return value

    @field_validator("user_info", mode="before")
    @classmethod
    def _refuse_undecodable(cls, value: Any) -> Any:
        if isinstance(value, Refused):
            raise ValueError(value.reason)  # noqa: TRY004 - pydantic wants a ValueError
        return value

    @field_validator("user_info")
    @classmethod
    def _bounded(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_depth(value)
        size = len(dumps(value).encode())
        if size > MAX_FIELD_BYTES:
            raise ValueError(f"{size} bytes as JSON (limit {MAX_FIELD_BYTES})")
        return value


FIELDS: frozenset[str] = frozenset(AccountConfig.model_fields)
# fields an operator or the Master may change; the rest are managed by the store
SETTABLE: frozenset[str] = FIELDS - {"id", "config_version", "updated_at", "config_stale"}
_JSON_FIELDS = frozenset({"user_info"})
_NULLABLE = frozenset(name for name, f in AccountConfig.model_fields.items() if f.default is None)


def encode_value(value: Any) -> str | None:
    """One field as stored in the hash; ``None`` means the field is absent."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict | list):
        return dumps(value)
    return str(value)


class Refused:
    """A stored or typed JSON value that was not even decoded (too large, too deep, not
    JSON); validation refuses it with ``reason``, naming the field."""

    __slots__ = ("reason", "size")

    def __init__(self, reason: str, size: int) -> None:
        self.reason = reason
        self.size = size

    def __repr__(self) -> str:
        return f"<{self.size} bytes>"


def decode_value(name: str, raw: str) -> Any:
    """Inverse of :func:`encode_value` for hash values and CLI ``field=value`` strings.
    Never raises: what cannot be decoded is left for validation to refuse."""
    if name in _JSON_FIELDS:
        try:
            return loads(raw)
        except ValueError as exc:
            return Refused(str(exc), len(raw))
    if name in _NULLABLE and raw in ("", "null", "none"):
        return None
    return raw


def to_hash(config: AccountConfig) -> dict[str, str]:
    out = {}
    for name, value in config.model_dump().items():
        encoded = encode_value(value)
        if encoded is not None:
            out[name] = encoded
    return out


def _int_or_none(value: Any) -> int | None:
    """A stored version; None when absent, unreadable (an error reply) or not a number."""
    try:
        return None if value is None or isinstance(value, Exception) else int(value)
    except ValueError:
        return None


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def decode_hash(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    """A hash read with HGETALL as field values, not yet validated."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        name = _text(k)
        out[name] = decode_value(name, _text(v))
    return out


def from_hash(mapping: Mapping[Any, Any]) -> AccountConfig:
    """Decode a hash read with HGETALL. Raises InvalidAccountConfig with a clear reason."""
    return validate(decode_hash(mapping))


def validate(data: Mapping[str, Any]) -> AccountConfig:
    try:
        return AccountConfig.model_validate(data)
    except ValidationError as exc:
        raise InvalidAccountConfig(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """The errors in one bounded sentence: each field, a clipped view of its value, why."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"][:1]) or "value"
        shown = clip(repr(err.get("input")), 60)
        parts.append(f"{loc}={shown}: {clip(err['msg'], 200)}")
    return clip("; ".join(parts), MAX_REASON_CHARS // 2)


def parse_assignments(pairs: Iterable[str]) -> dict[str, Any]:
    """``["field=value", …]`` from the command line, decoded like hash values."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise InvalidAccountConfig(f"{pair!r} is not of the form field=value")
        out[name] = decode_value(name, raw)
    return out


def check_changes(current: Mapping[str, Any], changes: Mapping[str, Any]) -> AccountConfig:
    """The config with ``changes`` applied to ``current`` (decoded hash values, which
    need not validate on their own: a change may repair them), or InvalidAccountConfig.
    Writes nothing."""
    unknown = sorted(set(changes) - FIELDS)
    if unknown:
        known = ", ".join(sorted(SETTABLE))
        raise InvalidAccountConfig(f"unknown field {', '.join(unknown)} (settable: {known})")
    managed = sorted(set(changes) - SETTABLE)
    if managed:
        raise InvalidAccountConfig(f"field {', '.join(managed)} cannot be set directly")
    return validate({**current, **changes})


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """What one versioned write did."""

    account_id: str
    version: int
    fields: tuple[str, ...]
    worker_id: str | None  # owner after the write
    previous_worker_id: str | None


# KEYS: account hash, unassigned set. ARGV: expected version ('' = any), updated_at,
# JSON {field: value}, JSON [field to delete], worker set head, worker set tail, account id,
# expected owner ('' = any).
_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'config_version') or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return -2 end
local old = redis.call('HGET', KEYS[1], 'worker_id')
if ARGV[8] ~= '' and old ~= ARGV[8] then return -3 end
for k, v in pairs(cjson.decode(ARGV[3])) do redis.call('HSET', KEYS[1], k, v) end
for _, k in ipairs(cjson.decode(ARGV[4])) do redis.call('HDEL', KEYS[1], k) end
local new = redis.call('HGET', KEYS[1], 'worker_id')
if old ~= new then
  if old then redis.call('SREM', ARGV[5] .. old .. ARGV[6], ARGV[7]) end
  if new then
    redis.call('SADD', ARGV[5] .. new .. ARGV[6], ARGV[7])
    redis.call('SREM', KEYS[2], ARGV[7])
  else
    redis.call('SADD', KEYS[2], ARGV[7])
  end
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2])
return redis.call('HINCRBY', KEYS[1], 'config_version', 1)
"""

# KEYS: account hash, accounts set, owner's account set or the unassigned set
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
local id = redis.call('HGET', KEYS[1], 'id')
redis.call('SADD', KEYS[2], id)
redis.call('SADD', KEYS[3], id)
return 1
"""

# KEYS: account hash, accounts set, pending index, unassigned set.
# ARGV: worker set head, tail, id.
_REMOVE = """
local v = redis.call('HGET', KEYS[1], 'config_version')
if not v then return -1 end
local w = redis.call('HGET', KEYS[1], 'worker_id')
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('SREM', KEYS[4], ARGV[3])
if w then redis.call('SREM', ARGV[1] .. w .. ARGV[2], ARGV[3]) end
return {tonumber(v), w or ''}
"""

# HSET only on an existing hash: never resurrect a removed account
_MARK_STALE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'config_stale', 'true') end
return 1
"""


class AccountStore:
    """Reads and versioned writes of account hashes."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._update = redis.register_script(_UPDATE)
        self._create = redis.register_script(_CREATE)
        self._remove = redis.register_script(_REMOVE)
        self._mark_stale = redis.register_script(_MARK_STALE)

    async def create(self, config: AccountConfig) -> AccountConfig:
        config = config.model_copy(update={"config_version": 1, "updated_at": utcnow()})
        flat = [item for pair in to_hash(config).items() for item in pair]
        account_key = self.keys.account(config.id)
        owner = (
            self.keys.worker_accounts(config.worker_id)
            if config.worker_id
            else self.keys.unassigned
        )
        created = await call(self._create(keys=[account_key, self.keys.accounts, owner], args=flat))
        if not created:
            raise AccountExists(f"account {config.id} exists already")
        return config

    async def get(self, account_id: str) -> AccountConfig:
        raw = await call(self.redis.hgetall(self.keys.account(account_id)))
        if not raw:
            raise AccountNotFound(f"no account {account_id!r}")
        return from_hash(raw)

    async def get_raw(self, account_ids: Sequence[str]) -> list[dict[bytes, bytes]]:
        """HGETALL of many accounts in one round trip (empty dict: no such account)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in account_ids:
                pipe.hgetall(self.keys.account(account_id))
            return list(await call(pipe.execute()))

    async def get_each(self, account_ids: Sequence[str]) -> list[dict[bytes, bytes] | Exception]:
        """HGETALL of many accounts in one round trip, where one account's error reply
        (NOPERM once access was revoked, WRONGTYPE for a key overwritten by something
        else) is that account's result instead of the whole call's exception."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in account_ids:
                pipe.hgetall(self.keys.account(account_id))
            replies = await call(pipe.execute(raise_on_error=False))
        for reply in replies:
            if isinstance(reply, Exception) and (
                is_transient(reply) or isinstance(reply, CONNECTION_ERRORS)
            ):
                raise BusUnavailable(f"Redis cannot serve us right now: {reply}") from reply
        return list(replies)

    async def versions(self, account_ids: Sequence[str]) -> dict[str, int | None]:
        """Each account's ``config_version`` in one round trip (None: no such account)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in account_ids:
                pipe.hget(self.keys.account(account_id), "config_version")
            raw = await call(pipe.execute(raise_on_error=False))
        return {a: _int_or_none(v) for a, v in zip(account_ids, raw, strict=True)}

    async def login_statuses(self) -> Counter[str]:
        """How many accounts are in each login status, in two round trips."""
        ids = await self.ids()
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in ids:
                pipe.hget(self.keys.account(account_id), "login_status")
            replies = await call(pipe.execute(raise_on_error=False))
        return Counter(
            _text(r) if isinstance(r, bytes | str) else "not_logged_in"
            for r in replies
            if not isinstance(r, Exception)
        )

    async def ids(self) -> list[str]:
        return sorted(_text(m) for m in await call(self.redis.smembers(self.keys.accounts)))

    async def unassigned_ids(self) -> list[str]:
        return sorted(_text(m) for m in await call(self.redis.smembers(self.keys.unassigned)))

    async def ids_of_worker(self, worker_id: str) -> list[str]:
        members = await call(self.redis.smembers(self.keys.worker_accounts(worker_id)))
        return sorted(_text(m) for m in members)

    async def update(
        self,
        account_id: str,
        changes: Mapping[str, Any],
        *,
        expect_version: int | None = None,
        expect_owner: str | None = None,
    ) -> AccountUpdate:
        """Validate ``changes`` against the current config, then write them and bump the
        version atomically. Raises AccountNotFound, InvalidAccountConfig, VersionConflict,
        and NotOwner when ``expect_owner`` is given and does not own the account then."""
        raw = await call(self.redis.hgetall(self.keys.account(account_id)))
        if not raw:
            raise AccountNotFound(f"no account {account_id!r}")
        batch = {account_id: (decode_hash(raw), changes)}
        (result,) = await self.update_many(batch, expect_version, expect_owner)
        if isinstance(result, Exception):
            raise result
        return result

    async def update_many(
        self,
        batch: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
        expect_version: int | None = None,
        expect_owner: str | None = None,
    ) -> list[AccountUpdate | Exception]:
        """Versioned writes of many accounts in one pipeline (each atomic on its own).

        Every change is validated before anything is sent; an invalid one yields its
        InvalidAccountConfig in the result list and is not written.
        """
        head, tail = self.keys.split(self.keys.worker_accounts)
        now = utcnow().isoformat()
        results: list[AccountUpdate | Exception | None] = []
        sent: list[tuple[int, Mapping[str, Any], AccountConfig, tuple[str, ...]]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id, (current, changes) in batch.items():
                try:
                    new = check_changes(current, changes)
                except InvalidAccountConfig as exc:
                    results.append(exc)
                    continue
                fields = tuple(sorted(changes))
                encoded = {f: encode_value(getattr(new, f)) for f in fields}
                sets = {f: v for f, v in encoded.items() if v is not None}
                dels = [f for f, v in encoded.items() if v is None]
                expected = "" if expect_version is None else str(expect_version)
                args = [
                    *(expected, now, dumps(sets), dumps(dels), head, tail, account_id),
                    expect_owner or "",
                ]
                keys = [self.keys.account(account_id), self.keys.unassigned]
                await self._update(keys=keys, args=args, client=pipe)
                sent.append((len(results), current, new, fields))
                results.append(None)  # filled from the pipeline's reply below
            replies = await call(pipe.execute()) if sent else []
        for (index, current, new, fields), reply in zip(sent, replies, strict=True):
            version = int(reply)
            if version == -1:
                results[index] = AccountNotFound(f"no account {new.id!r}")
            elif version == -2:
                results[index] = VersionConflict(f"account {new.id} changed meanwhile")
            elif version == -3:
                results[index] = NotOwner(f"account {new.id} is not owned by {expect_owner}")
            else:
                results[index] = AccountUpdate(
                    new.id, version, fields, new.worker_id, current.get("worker_id")
                )
        return [r if r is not None else VersionConflict("no reply") for r in results]

    async def remove(self, account_id: str) -> tuple[int, str | None]:
        """Delete the account; returns its last version and its owner."""
        head, tail = self.keys.split(self.keys.worker_accounts)
        keys = [
            self.keys.account(account_id),
            self.keys.accounts,
            self.keys.account_pending(account_id),
            self.keys.unassigned,
        ]
        reply = await call(self._remove(keys=keys, args=[head, tail, account_id]))
        if reply == -1:
            raise AccountNotFound(f"no account {account_id!r}")
        version, worker = reply
        return int(version), (_text(worker) or None)

    async def set_stale(self, account_id: str, stale: bool) -> None:
        """Mark (or clear) ``config_stale`` without a version bump; no-op if the account is gone."""
        key = self.keys.account(account_id)
        if stale:
            await call(self._mark_stale(keys=[key]))
        else:
            await call(self.redis.hdel(key, "config_stale"))
