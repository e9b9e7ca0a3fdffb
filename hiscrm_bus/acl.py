"""The Redis users of a fleet and their rules, as data: rendered to an ACL file,
applied at run time, re-applied after a Redis restart.

A worker drives a browser on the open web, so its credentials are the likeliest to be
stolen. Its user may only: follow its own control channel, write its own registry hash
and its own outgoing streams (XADD only: no delete, no trim command), add itself to the
worker index (ZADD only), read its assignment set and the hashes of the accounts it
owns *now*, and read and write those accounts' sealed browser sessions. What it owns
changes as accounts move, so the Master (a trusted, admin-capable user) rewrites a
worker's key rules whenever its set of accounts changes, on its own start, and whenever
Redis' run id changes (runtime ACL changes are lost on a Redis restart unless Redis has
an ACL file and they are saved).

Only users that exist are managed: with no ``worker-<id>`` user (a single trusted
deployment on the default user) nothing here runs a command but ``ACL USERS``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis

from .connection import call, text
from .keys import Keys, escape_glob

log = logging.getLogger(__name__)
WORKER_USER_PREFIX = "worker-"
MASTER_USER = "hiscrm-master"
OPERATOR_USER = "hiscrm-operator"
# what redis-py needs to connect, and what a worker does
# (CLIENT SETINFO, which redis-py sends to Redis 7.2+, may be refused: it ignores that)
_CONNECT = ("auth", "hello", "ping", "select", "quit", "reset", "client|setname")
WORKER_COMMANDS: tuple[str, ...] = (
    *_CONNECT,
    "subscribe",
    "unsubscribe",
    "multi",
    "exec",
    "discard",
    "hset",
    "hsetnx",
    "hdel",
    "pexpire",
    "zadd",
    "hgetall",
    "hget",
    "smembers",
    "xadd",
    "hincrby",
)
# the Master and operators: everything on our keys and channels except what can wreck
# a shared Redis (FLUSHALL, KEYS, CONFIG, DEBUG, …), plus managing the worker users
ADMIN_COMMANDS: tuple[str, ...] = (
    "acl|setuser",
    "acl|deluser",
    "acl|getuser",
    "acl|users",
    "acl|list",
    "acl|save",
    "acl|whoami",
    "info",
    "client|setname",
    "client|id",
)
_USERS_CACHE_S = 1.0


def worker_user(worker_id: str) -> str:
    return f"{WORKER_USER_PREFIX}{worker_id}"


def password_hash(password: str) -> str:
    """The ``#<sha256>`` form Redis keeps in its ACL: the password itself never leaves us."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(32)


def worker_key_rules(keys: Keys, worker_id: str, account_ids: Iterable[str]) -> list[str]:
    """The key rules of ``worker-<id>`` while it owns ``account_ids``."""
    rules = [
        "resetkeys",
        "~" + escape_glob(keys.worker(worker_id)),  # its registry hash (HSET, PEXPIRE)
        "%W~" + escape_glob(keys.workers),  # ZADD itself to the index
        "%W~" + keys.worker_streams(worker_id),  # XADD to its own streams
        "%R~" + escape_glob(keys.worker_accounts(worker_id)),
    ]
    for a in sorted(set(account_ids)):
        rules.append("%R~" + escape_glob(keys.account(a)))
        rules.append("~" + escape_glob(keys.session(a)))  # its sealed browser session
    return rules


def worker_rules(keys: Keys, worker_id: str, account_ids: Iterable[str] = ()) -> list[str]:
    """Every rule of ``worker-<id>`` but its password."""
    return [
        "resetchannels",
        "&" + escape_glob(keys.control(worker_id)),
        "-@all",
        *(f"+{c}" for c in WORKER_COMMANDS),
        *worker_key_rules(keys, worker_id, account_ids),
    ]


def admin_rules(keys: Keys) -> list[str]:
    """Rules of the Master's and the operators' users (all but the password)."""
    pattern = escape_glob(keys.prefix) + "*"
    return [
        "resetkeys",
        f"~{pattern}",
        "resetchannels",
        f"&{pattern}",
        "+@all",
        "-@dangerous",
        *(f"+{c}" for c in ADMIN_COMMANDS),
    ]


@dataclass(frozen=True, slots=True)
class UserLine:
    name: str
    rules: list[str]
    password: str

    def render(self) -> str:
        """The user as one line of an ACL file (the password as its hash)."""
        return " ".join(["user", self.name, "on", password_hash(self.password), *self.rules])


def render_file(users: Sequence[UserLine], default_password: str) -> str:
    """An ACL file: the default user behind a password nobody is given, then ``users``.

    The default user keeps every right on purpose: Redis 7.0 replays the MULTI/EXEC
    blocks of its append-only file with the default user's rights, so a default user
    that is off or limited silently drops those writes when Redis restarts (measured:
    a restarted Redis came back without its accounts)."""
    lines = [f"user default on {password_hash(default_password)} ~* &* +@all"]
    lines += [u.render() for u in users]
    return "\n".join(lines) + "\n"


class Grants:
    """Keeps each worker user's read access equal to the accounts it owns now."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._users: set[str] | None = None
        self._users_at = -_USERS_CACHE_S
        self._run_id: str | None = None
        self._denied_logged = False
        self.applied = 0  # how many SETUSER calls were made, for tests and status

    async def users(self, *, fresh: bool = False) -> set[str]:
        """The Redis users (empty when we may not list them: then none are managed)."""
        now = anyio.current_time()
        if self._users is None or fresh or now - self._users_at > _USERS_CACHE_S:
            try:
                names: Any = await call(self.redis.acl_users())
            except rexc.NoPermissionError:
                if not self._denied_logged:
                    log.warning("this Redis user may not list ACL users; grants are not managed")
                    self._denied_logged = True
                names = []
            except rexc.ResponseError as exc:  # a Redis without ACLs
                log.debug("ACL USERS failed: %s", exc)
                names = []
            self._users = {text(n) for n in names}
            self._users_at = now
        return self._users

    async def worker_ids(self) -> list[str]:
        """The ids of every worker that has a user."""
        return sorted(
            u[len(WORKER_USER_PREFIX) :]
            for u in await self.users(fresh=True)
            if u.startswith(WORKER_USER_PREFIX)
        )

    async def sync(self, worker_ids: Iterable[str | None]) -> int:
        """Rewrite the key rules of these workers' users from the accounts each owns now,
        in two round trips. Returns how many users were updated."""
        users = await self.users()
        targets = sorted({w for w in worker_ids if w and worker_user(w) in users})
        if not targets:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id in targets:
                pipe.smembers(self.keys.worker_accounts(worker_id))
            owned: list[Any] = await call(pipe.execute())
        async with self.redis.pipeline(transaction=False) as pipe:
            for worker_id, members in zip(targets, owned, strict=True):
                accounts = [text(m) for m in members]
                rules = worker_key_rules(self.keys, worker_id, accounts)
                pipe.execute_command("ACL", "SETUSER", worker_user(worker_id), *rules)
            await call(pipe.execute())
        self.applied += len(targets)
        log.debug("read access of %s set from their accounts", ", ".join(targets))
        return len(targets)

    async def sync_all(self) -> int:
        """Every worker user's grants, e.g. on a Master's start."""
        return await self.sync(await self.worker_ids())

    async def ensure(self) -> bool:
        """Re-apply every grant when Redis restarted since we last did (its run id
        changed). True when they were applied now."""
        try:
            info: Any = await call(self.redis.info("server"))
        except rexc.NoPermissionError:
            return False
        run_id = str(info.get("run_id", ""))
        if run_id == self._run_id:
            return False
        count = await self.sync_all()
        if count:
            log.info("read access of %d worker user(s) applied (Redis run %s)", count, run_id[:8])
        self._run_id = run_id
        return True


async def add_worker(redis: Redis, keys: Keys, worker_id: str, password: str) -> bool:
    """Create or update ``worker-<id>`` with ``password`` and the rules of a worker that
    owns what the assignments say it owns now. True if Redis saved it to its ACL file
    (False: Redis has none, and the user lasts until Redis restarts)."""
    accounts = await call(redis.smembers(keys.worker_accounts(worker_id)))
    owned = [text(a) for a in accounts]
    rules = ["reset", "on", password_hash(password), *worker_rules(keys, worker_id, owned)]
    await call(redis.execute_command("ACL", "SETUSER", worker_user(worker_id), *rules))  # type: ignore[no-untyped-call]
    return await save(redis)


async def remove_worker(redis: Redis, worker_id: str) -> tuple[bool, bool]:
    """Delete ``worker-<id>`` (its connections are closed by Redis).
    Returns (it existed, saved to the ACL file)."""
    deleted = int(await call(redis.acl_deluser(worker_user(worker_id))))
    return deleted > 0, await save(redis)


async def save(redis: Redis) -> bool:
    """ACL SAVE when Redis runs with an ACL file; False when it has none."""
    try:
        await call(redis.acl_save())
    except rexc.ResponseError as exc:
        log.debug("ACL SAVE: %s", exc)
        return False
    return True


async def rules_of(redis: Redis, names: Iterable[str] | None = None) -> dict[str, str]:
    """User name → its rules as ``ACL LIST`` shows them, password hashes masked.
    Without ``names``: the fleet's users (workers, Master, operator)."""
    lines: Any = await call(redis.acl_list())
    wanted = set(names) if names is not None else None
    out: dict[str, str] = {}
    for line in lines:
        parts = text(line).split(" ")
        if len(parts) < 2 or parts[0] != "user":
            continue
        name = parts[1]
        ours = name.startswith(WORKER_USER_PREFIX) or name in (MASTER_USER, OPERATOR_USER)
        if (wanted is None and ours) or (wanted is not None and name in wanted):
            shown = ["#…" if p.startswith("#") else ">…" if p.startswith(">") else p for p in parts]
            out[name] = " ".join(shown[2:])
    return out
