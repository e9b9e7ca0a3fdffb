"""The account configuration: its model, its Redis hash codec, and versioned atomic writes.

Every change to an account goes through :class:`AccountStore`, which validates first
and then writes the changed fields and bumps ``config_version`` in one Lua call, so a
reader never sees fields without the version that announces them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError, to_json
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from .connection import call, call_each, text
from .errors import (
    AccountExists,
    AccountNotFound,
    InvalidAccountConfig,
    NotOwner,
    VersionConflict,
)
from .keys import Keys
from .limits import (
    MAX_FIELD_BYTES,
    MAX_REASON_CHARS,
    MAX_VERSION,
    check_depth,
    clip,
    dumps,
    loads,
    utcnow,
)
from .scripts import ScriptCall, run_scripts

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
    config_version: int = Field(0, ge=0, le=MAX_VERSION)
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
        if not value:
            return value
        check_depth(value)
        size = len(to_json(value, fallback=str))
        if size > MAX_FIELD_BYTES:
            raise ValueError(f"{size} bytes as JSON (limit {MAX_FIELD_BYTES})")
        return value


FIELDS: frozenset[str] = frozenset(AccountConfig.model_fields)
# fields an operator or the Master may change; the rest are managed by the store
SETTABLE: frozenset[str] = FIELDS - {"id", "config_version", "updated_at", "config_stale"}
_JSON_FIELDS = frozenset({"user_info"})
_NULLABLE = frozenset(name for name, f in AccountConfig.model_fields.items() if f.default is None)
_DECODED = _JSON_FIELDS | _NULLABLE


def needs_a_login(config: AccountConfig) -> bool:
    """The account cannot crawl until someone logs it in (again)."""
    return config.login_status == "expired" or not config.platform_user_id


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


def decode_hash(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    """A hash read with HGETALL as field values, not yet validated."""
    try:  # the common case, at a worker's start 10,000 times over: UTF-8 bytes
        out: dict[str, Any] = {k.decode(): v.decode() for k, v in mapping.items()}
    except (AttributeError, UnicodeDecodeError):
        out = {text(k): text(v) for k, v in mapping.items()}
    # most fields are their text as stored
    for name in _DECODED.intersection(out):
        out[name] = decode_value(name, out[name])
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
    """The errors in one bounded sentence: each field, a clipped view of its value, why.
    The value of a field that may carry credentials (``SECRET_FIELDS``: a proxy URL's
    user:password) is never shown, only its length: this sentence goes to logs, ACKs
    and update outcomes."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"][:1]) or "value"
        value = err.get("input")
        if loc in SECRET_FIELDS:
            shown = f"<hidden, {len(value)} chars>" if isinstance(value, str) else "<hidden>"
        else:
            shown = clip(repr(value), 60)
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


# -- accounts in bulk: the rows of an import file, checked before anything is written --

# the short names an import file may use for two fields (those of ``hiscrm account add``)
ALIASES: Mapping[str, str] = {"worker": "worker_id", "interval": "monitor_interval_s"}
# what an export writes, in this order: the configuration, including what a login set
# (login_status, platform_user_id, user_info), so that a file moves accounts between
# Redis instances; not config_version, updated_at, config_stale (the store's own status)
EXPORTED: tuple[str, ...] = ("id", *(f for f in AccountConfig.model_fields if f in SETTABLE))
# may carry credentials (a proxy URL's user:password): exported only when asked for
SECRET_FIELDS: frozenset[str] = frozenset({"proxy"})


def exported_fields(*, with_secrets: bool) -> tuple[str, ...]:
    """The columns of an export, in order."""
    return tuple(f for f in EXPORTED if with_secrets or f not in SECRET_FIELDS)


def export_row(config: AccountConfig, *, with_secrets: bool) -> dict[str, Any]:
    """One account as an export row: field name to value (JSON-able)."""
    values = config.model_dump()
    return {f: values[f] for f in exported_fields(with_secrets=with_secrets)}


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One account as an import file gives it. ``line``: where the row starts;
    ``values``: by column or key; ``text``: the values are text (CSV cells), decoded
    like ``field=value`` on the command line, rather than typed JSON values."""

    line: int
    values: Mapping[str, Any]
    text: bool


@dataclass(frozen=True, slots=True)
class RowProblem:
    """Why the row on ``line`` cannot be imported."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(slots=True)
class ImportPlan:
    """What an import would do, checked against the stored accounts: written only when
    ``problems`` is empty."""

    create: list[AccountConfig] = field(default_factory=list)
    # account id -> (its decoded hash, the fields the file changes)
    change: dict[str, tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


def check_columns(names: Iterable[str]) -> None:
    """The columns of an import file (or the keys of one JSON line): InvalidAccountConfig
    for an unknown or unsettable one, one field named twice (``worker`` is
    ``worker_id``), or no ``id``."""
    names = list(names)
    unknown = sorted({n for n in names if n not in FIELDS and n not in ALIASES})
    if unknown:
        known = ", ".join(["id", *sorted(SETTABLE), *ALIASES])
        raise InvalidAccountConfig(f"unknown field {', '.join(unknown)} (known: {known})")
    managed = sorted({n for n in names if n in FIELDS and n not in SETTABLE and n != "id"})
    if managed:
        raise InvalidAccountConfig(f"field {', '.join(managed)} is the store's, not importable")
    seen: dict[str, str] = {}
    for name in names:
        canonical = ALIASES.get(name, name)
        if canonical in seen:
            twice = name if seen[canonical] == name else f"{seen[canonical]} and {name}"
            raise InvalidAccountConfig(f"{twice} given twice")
        seen[canonical] = name
    if "id" not in seen:
        raise InvalidAccountConfig("no id")


def row_fields(row: ImportRow) -> tuple[str, dict[str, Any]]:
    """The account id a row names and the fields it sets, decoded; InvalidAccountConfig
    for a bad column or id (values are validated against the stored account later)."""
    check_columns(row.values)
    fields: dict[str, Any] = {}
    for key, value in row.values.items():
        name = ALIASES.get(key, key)
        fields[name] = decode_value(name, value) if row.text and isinstance(value, str) else value
    account_id = fields.pop("id")
    if not isinstance(account_id, str) or not re.fullmatch(ID_PATTERN, account_id):
        shown = clip(repr(account_id), 60)
        raise InvalidAccountConfig(
            f"id={shown}: not an account id (1 to 128 letters, digits, _ . @ -)"
        )
    return account_id, fields


def _differs(name: str, new: AccountConfig, stored: Mapping[str, str]) -> bool:
    """Would writing ``name`` of ``new`` change the stored hash?"""
    value = getattr(new, name)
    if name in _JSON_FIELDS and name in stored:
        # by value: the same object written with its keys in another order is no change
        return bool(decode_value(name, stored[name]) != value)
    return encode_value(value) != stored.get(name)


def plan_row(
    account_id: str, fields: Mapping[str, Any], stored: Mapping[Any, Any]
) -> AccountConfig | dict[str, Any]:
    """A new account's config (``stored`` empty), or the fields that change an existing
    one (empty: nothing changes). Raises InvalidAccountConfig. Writes nothing."""
    if not stored:
        return check_changes({"id": account_id}, fields)
    strings = {text(k): text(v) for k, v in stored.items()}
    new = check_changes(decode_hash(stored), fields)
    return {f: v for f, v in fields.items() if _differs(f, new, strings)}


@dataclass(frozen=True, slots=True)
class WriteCall:
    """One versioned write, validated and ready to run as :data:`WRITE_ACCOUNT_LUA`."""

    new: AccountConfig
    fields: tuple[str, ...]
    keys: list[str]
    args: list[Any]


def final_version(account_id: str) -> InvalidAccountConfig:
    """The error of a write to an account whose config_version cannot be raised."""
    return InvalidAccountConfig(
        f"account {account_id}: its config_version cannot be raised any more (final at "
        f"{MAX_VERSION}, or no integer), so nothing was written"
    )


def write_failure(code: int, account_id: str, expect_owner: str | None) -> Exception:
    """The error a negative reply of :data:`WRITE_ACCOUNT_LUA` stands for."""
    if code == -1:
        return AccountNotFound(f"no account {account_id!r}")
    if code == -2:
        return VersionConflict(f"account {account_id} changed meanwhile")
    if code == -4:
        return final_version(account_id)
    return NotOwner(f"account {account_id} is not owned by {expect_owner}")


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """What one versioned write did."""

    account_id: str
    version: int
    fields: tuple[str, ...]
    worker_id: str | None  # owner after the write
    previous_worker_id: str | None


# The versioned write as a Lua function, so a caller can compose it with other steps in
# one atomic call (see hiscrm_master.updates). Returns the new version, or -1 (no such
# account), -2 (its version is not ``expected``), -3 (not owned by ``expect_owner``),
# -4 (its version cannot be raised: nothing was written).
WRITE_ACCOUNT_LUA = """
local function write_account(acct, unassigned, expected, updated_at, sets, dels, head, tail,
                             id, expect_owner)
  if redis.call('EXISTS', acct) == 0 then return -1 end
  local cur = tonumber(redis.call('HGET', acct, 'config_version') or '0')
  if expected ~= '' and tonumber(expected) ~= cur then return -2 end
  local old = redis.call('HGET', acct, 'worker_id')
  if expect_owner ~= '' and old ~= expect_owner then return -3 end
  -- checked before anything is written: HINCRBY fails at 2^63-1, and on what is no
  -- integer, after the fields above would have been written (an owner without a bump)
  local raw = redis.call('HGET', acct, 'config_version') or '0'
  local sign, digits = string.match(raw, '^(%-?)([1-9]%d*)$')
  local limit = sign == '-' and '9223372036854775809' or '9223372036854775807'
  if raw ~= '0' and not (digits and (#digits < 19 or (#digits == 19 and digits < limit))) then
    return -4
  end
  for k, v in pairs(cjson.decode(sets)) do redis.call('HSET', acct, k, v) end
  for _, k in ipairs(cjson.decode(dels)) do redis.call('HDEL', acct, k) end
  local new = redis.call('HGET', acct, 'worker_id')
  if old ~= new then
    if old then redis.call('SREM', head .. old .. tail, id) end
    if new then
      redis.call('SADD', head .. new .. tail, id)
      redis.call('SREM', unassigned, id)
    else
      redis.call('SADD', unassigned, id)
    end
  end
  redis.call('HSET', acct, 'updated_at', updated_at)
  return redis.call('HINCRBY', acct, 'config_version', 1)
end
"""

# KEYS: account hash, unassigned set. ARGV: expected version ('' = any), updated_at,
# JSON {field: value}, JSON [field to delete], worker set head, worker set tail, account id,
# expected owner ('' = any).
_UPDATE = (
    WRITE_ACCOUNT_LUA
    + """
return write_account(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
                     ARGV[7], ARGV[8])
"""
)

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
# a key that holds no hash (overwritten with another type) is removed too: there is
# nothing in it to repair, and its id stays listed until it is gone
_REMOVE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
local v, w = '0', false
if kind == 'hash' then
  v = redis.call('HGET', KEYS[1], 'config_version')
  if not v then return -1 end
  w = redis.call('HGET', KEYS[1], 'worker_id')
elseif kind == 'none' then
  return -1
end
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('SREM', KEYS[4], ARGV[3])
if w then redis.call('SREM', ARGV[1] .. w .. ARGV[2], ARGV[3]) end
return {tonumber(v) or 0, w or ''}
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
        call_ = (self._create, self._create_keys(config), flat)
        (created,) = await run_scripts(self.redis, [call_], durable=True)
        if not created:
            raise AccountExists(f"account {config.id} exists already")
        return config

    async def create_many(
        self, configs: Sequence[AccountConfig]
    ) -> list[AccountConfig | AccountExists]:
        """:meth:`create` of many accounts in one pipeline, each atomic on its own; an id
        that exists already is that account's AccountExists, and is not written."""
        now = utcnow()
        made = [c.model_copy(update={"config_version": 1, "updated_at": now}) for c in configs]
        calls: list[ScriptCall] = [
            (self._create, self._create_keys(c), [i for pair in to_hash(c).items() for i in pair])
            for c in made
        ]
        replies = await run_scripts(self.redis, calls, durable=True)
        return [
            config if created else AccountExists(f"account {config.id} exists already")
            for config, created in zip(made, replies, strict=True)
        ]

    def _create_keys(self, config: AccountConfig) -> list[str]:
        """The keys of :data:`_CREATE` for ``config``: its hash, its bucket's account
        set, and its owner's account set or its bucket's unassigned set."""
        bucket = self.keys.bucket(config.id)
        owner = (
            self.keys.worker_accounts(config.worker_id, bucket)
            if config.worker_id
            else self.keys.unassigned(bucket)
        )
        return [self.keys.account(config.id), self.keys.accounts(bucket), owner]

    async def plan_import(self, rows: Sequence[ImportRow], batch: int = 500) -> ImportPlan:
        """Check every row of an import file against the stored accounts (read in
        pipelined batches): a new account, changed fields, no change, or a problem with
        the row's line (a bad field or value, an id given twice). Writes nothing."""
        plan = ImportPlan()
        parsed: list[tuple[int, str, dict[str, Any]]] = []
        first_line: dict[str, int] = {}
        for row in rows:
            try:
                account_id, fields = row_fields(row)
            except InvalidAccountConfig as exc:
                plan.problems.append(RowProblem(row.line, str(exc)))
                continue
            if account_id in first_line:
                where = f"line {first_line[account_id]}"
                plan.problems.append(RowProblem(row.line, f"{account_id}: given on {where} too"))
                continue
            first_line[account_id] = row.line
            parsed.append((row.line, account_id, fields))
        ids = [account_id for _line, account_id, _fields in parsed]
        stored: list[dict[bytes, bytes] | Exception] = []
        for start in range(0, len(ids), batch):
            stored += await self.get_each(ids[start : start + batch])
        for (line, account_id, fields), raw in zip(parsed, stored, strict=True):
            if isinstance(raw, Exception):
                reason = f"{account_id}: the stored account cannot be read ({raw})"
                plan.problems.append(RowProblem(line, reason))
                continue
            try:
                planned = plan_row(account_id, fields, raw)
            except InvalidAccountConfig as exc:
                plan.problems.append(RowProblem(line, f"{account_id}: {exc}"))
                continue
            if isinstance(planned, AccountConfig):
                plan.create.append(planned)
            elif planned:
                plan.change[account_id] = (decode_hash(raw), planned)
            else:
                plan.unchanged.append(account_id)
        return plan

    async def configs(
        self, *, platform: str | None = None, worker: str | None = None, batch: int = 500
    ) -> tuple[list[AccountConfig], dict[str, str]]:
        """Every account (of ``platform``, of ``worker``) in id order, read in pipelined
        batches; and, apart, why each one that does not validate or cannot be read is
        left out."""
        ids = await (self.ids_of_worker(worker) if worker else self.ids())
        found: list[AccountConfig] = []
        unusable: dict[str, str] = {}
        for start in range(0, len(ids), batch):
            chunk = ids[start : start + batch]
            for account_id, raw in zip(chunk, await self.get_each(chunk), strict=True):
                if isinstance(raw, Exception):
                    unusable[account_id] = f"cannot be read ({raw})"
                    continue
                if not raw:
                    continue  # removed meanwhile
                if platform is not None and decode_hash(raw).get("platform") != platform:
                    continue
                try:
                    config = from_hash(raw)
                except InvalidAccountConfig as exc:
                    unusable[account_id] = f"its stored config is invalid: {exc}"
                    continue
                found.append(config)
        return found, unusable

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
        if len(account_ids) == 1:  # a pipeline costs redis-py a fifth more than a call
            try:
                raw: Any = await call(self.redis.hgetall(self.keys.account(account_ids[0])))
                return [raw]
            except rexc.ResponseError as exc:  # not an outage: call() raised those
                return [exc]
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in account_ids:
                pipe.hgetall(self.keys.account(account_id))
            return await call_each(pipe.execute(raise_on_error=False))

    async def versions(self, account_ids: Sequence[str]) -> dict[str, int | None]:
        """Each account's ``config_version`` in one round trip (None: no such account)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in account_ids:
                pipe.hget(self.keys.account(account_id), "config_version")
            raw = await call_each(pipe.execute(raise_on_error=False))
        return {a: _int_or_none(v) for a, v in zip(account_ids, raw, strict=True)}

    async def login_statuses(self) -> Counter[str]:
        """How many accounts are in each login status, in two round trips."""
        ids = await self.ids()
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in ids:
                pipe.hget(self.keys.account(account_id), "login_status")
            replies = await call_each(pipe.execute(raise_on_error=False))
        return Counter(
            text(r) if isinstance(r, bytes | str) else "not_logged_in"
            for r in replies
            if not isinstance(r, Exception)
        )

    async def ids(self) -> list[str]:
        """Every account id, in order."""
        return await self._members(self.keys.accounts)

    async def unassigned_ids(self) -> list[str]:
        """The ids of the accounts no worker owns, in order."""
        return await self._members(self.keys.unassigned)

    async def ids_of_worker(self, worker_id: str) -> list[str]:
        """The ids of the accounts ``worker_id`` owns, in order."""
        return await self._members(partial(self.keys.worker_accounts, worker_id))

    async def ids_of_workers(self, worker_ids: Sequence[str]) -> list[list[str]]:
        """The ids each of ``worker_ids`` owns, in one round trip (per node on a
        cluster, where each worker's set is one per bucket)."""
        found = await self._per_worker(worker_ids, lambda pipe, key: pipe.smembers(key))
        return [[text(m) for members in sets for m in members] for sets in found]

    async def owned_by_each(self, worker_ids: Sequence[str]) -> list[list[str] | Exception]:
        """:meth:`ids_of_workers`, with the error reply of a worker whose account set
        Redis refused (e.g. WRONGTYPE: the key holds another type) in its place: one
        broken key is that worker's problem alone. An outage is everyone's."""
        found = await self._per_worker(
            worker_ids, lambda pipe, key: pipe.smembers(key), raise_on_error=False
        )
        return [_first_error(sets) or [text(m) for ms in sets for m in ms] for sets in found]

    async def counts_of_workers(self, worker_ids: Sequence[str]) -> list[int | Exception]:
        """How many accounts each of ``worker_ids`` owns, in one round trip; the error
        reply of a worker whose account set Redis refused (WRONGTYPE) in its place."""
        found = await self._per_worker(
            worker_ids, lambda pipe, key: pipe.scard(key), raise_on_error=False
        )
        return [_first_error(counts) or sum(int(n) for n in counts) for counts in found]

    async def _per_worker(
        self,
        worker_ids: Sequence[str],
        command: Callable[[Pipeline, str], object],
        *,
        raise_on_error: bool = True,
    ) -> list[list[Any]]:
        """``command`` on each worker's account set of every bucket, in one pipeline;
        the replies grouped per worker (error replies among them unless
        ``raise_on_error``)."""
        buckets = self.keys.buckets
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in worker_ids:
                for bucket in buckets:
                    command(pipe, self.keys.worker_accounts(worker_id, bucket))
            if raise_on_error:
                found: list[Any] = await call(pipe.execute())
            else:
                found = await call_each(pipe.execute(raise_on_error=False))
        per = len(buckets)
        return [found[i * per : (i + 1) * per] for i in range(len(worker_ids))]

    async def _members(self, name: Callable[[int], str]) -> list[str]:
        """The members of a set kept per bucket (one set on a single Redis), in order."""
        if not self.keys.cluster:
            return sorted(text(m) for m in await call(self.redis.smembers(name(0))))
        async with self.redis.pipeline(transaction=False) as pipe:
            for bucket in self.keys.buckets:
                pipe.smembers(name(bucket))
            found = await call(pipe.execute())
        return sorted(text(m) for members in found for m in members)

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

    def write_call(
        self,
        account_id: str,
        current: Mapping[str, Any],
        changes: Mapping[str, Any],
        expect_version: int | None = None,
        expect_owner: str | None = None,
    ) -> WriteCall:
        """The validated config and the keys and arguments of :data:`WRITE_ACCOUNT_LUA`
        for one versioned write (InvalidAccountConfig when it does not validate)."""
        new = check_changes(current, changes)
        bucket = self.keys.bucket(account_id)
        head, tail = self._owner_sets(bucket)
        fields = tuple(sorted(changes))
        encoded = {f: encode_value(getattr(new, f)) for f in fields}
        sets = {f: v for f, v in encoded.items() if v is not None}
        dels = [f for f, v in encoded.items() if v is None]
        expected = "" if expect_version is None else str(expect_version)
        now = utcnow().isoformat()
        args: list[Any] = [
            *(expected, now, dumps(sets), dumps(dels), head, tail, account_id),
            expect_owner or "",
        ]
        keys = [self.keys.account(account_id), self.keys.unassigned(bucket)]
        return WriteCall(new, fields, keys, args)

    def _owner_sets(self, bucket: int) -> tuple[str, str]:
        """(head, tail) of the worker account sets of ``bucket``, for Lua: ``head ..
        worker .. tail``."""
        return self.keys.split(lambda worker: self.keys.worker_accounts(worker, bucket))

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
        results: list[AccountUpdate | Exception | None] = []
        sent: list[tuple[int, Mapping[str, Any], AccountConfig, tuple[str, ...]]] = []
        calls: list[ScriptCall] = []
        for account_id, (current, changes) in batch.items():
            try:
                write = self.write_call(account_id, current, changes, expect_version, expect_owner)
            except InvalidAccountConfig as exc:
                results.append(exc)
                continue
            calls.append((self._update, write.keys, write.args))
            sent.append((len(results), current, write.new, write.fields))
            results.append(None)  # filled from the reply below
        replies = await run_scripts(self.redis, calls, durable=True)
        for (index, current, new, fields), reply in zip(sent, replies, strict=True):
            version = int(reply)
            if version < 0:
                results[index] = write_failure(version, new.id, expect_owner)
            else:
                results[index] = AccountUpdate(
                    new.id, version, fields, new.worker_id, current.get("worker_id")
                )
        return [r if r is not None else VersionConflict("no reply") for r in results]

    async def remove(self, account_id: str) -> tuple[int, str | None]:
        """Delete the account; returns its last version and its owner."""
        bucket = self.keys.bucket(account_id)
        head, tail = self._owner_sets(bucket)
        keys = [
            self.keys.account(account_id),
            self.keys.accounts(bucket),
            self.keys.account_pending(account_id),
            self.keys.unassigned(bucket),
        ]
        reply = await call(self._remove(keys=keys, args=[head, tail, account_id]))
        if reply == -1:
            raise AccountNotFound(f"no account {account_id!r}")
        version, worker = reply
        return int(version), (text(worker) or None)

    async def set_stale(self, account_id: str, stale: bool) -> None:
        """Mark (or clear) ``config_stale`` without a version bump; no-op if the account is gone."""
        key = self.keys.account(account_id)
        if stale:
            await call(self._mark_stale(keys=[key]))
        else:
            await call(self.redis.hdel(key, "config_stale"))


def _first_error(replies: Sequence[Any]) -> Exception | None:
    return next((r for r in replies if isinstance(r, Exception)), None)
