"""The Redis users of a fleet and their rules, as data: rendered to an ACL file,
applied at run time, re-applied after a Redis restart.

A worker drives a browser on the open web, so its credentials are the likeliest to be
stolen. Its user may only: follow its own control channel, write its own registry hash
and its own outgoing streams (XADD only: no delete, no trim command), add itself to the
worker index (ZADD only), read its assignment set and the hashes of the accounts it
owns *now*, and read and write those accounts' sealed browser sessions. Each of those
keys comes with its own commands, in an ACL selector of its own (Redis 7): a key rule
at the top level would let every command of the user run on it (``PEXPIRE`` on the
worker index, ``HSET`` under its stream names), so the top level has no key at all,
only the commands that name none (connecting, SUBSCRIBE, MULTI/EXEC). What it owns
changes as accounts move, so the Master (a trusted, admin-capable user) rewrites a
worker's key rules and selectors, in one ACL SETUSER per user (atomic: a read never
meets a half-written rule set), whenever its set of accounts changes, on its own start,
and whenever Redis' run id changes (runtime ACL changes are lost on a Redis restart
unless Redis has an ACL file and they are saved).

Only users that exist are managed: with no ``worker-<id>`` user (a single trusted
deployment on the default user) nothing here runs a command but ``ACL USERS``.

On a Redis Cluster every node, primary or replica, needs every user: a client talks to
each node that serves one of its slots, a replica may become a primary at any moment,
and Redis neither replicates ACL changes nor spreads them over the cluster bus. So a
change is made on every node, and the Master's liveness pass re-applies the users on a
node that joined or restarted (a new run id): it copies each user a settled node has
and the node lacks, then rewrites every worker's key rules there. A node that fails a
change forgets its run id here, so the next pass treats it the same way.
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
from redis.asyncio.cluster import ClusterNode

from .accounts import AccountStore
from .connection import call, is_cluster, text
from .errors import BusUnavailable
from .keys import STREAM_KINDS, Keys, escape_glob
from .nodes import Command, cluster_nodes, on_each, on_node

log = logging.getLogger(__name__)
WORKER_USER_PREFIX = "worker-"
MASTER_USER = "hiscrm-master"
OPERATOR_USER = "hiscrm-operator"
# what redis-py needs to connect, and what a worker sends that names no key: the top
# level of its user (CLIENT SETINFO, which redis-py sends to Redis 7.2+, may be
# refused: it ignores that)
_CONNECT = ("auth", "hello", "ping", "select", "quit", "reset", "client|setname")
WORKER_COMMANDS: tuple[str, ...] = (
    *_CONNECT,
    "subscribe",
    "unsubscribe",
    "multi",
    "exec",
    "discard",
)
# each key a worker touches, with only the commands it sends there (one selector each):
# its registry hash (claim: HSETNX, PEXPIRE NX, HGETALL; heartbeat: HSET, PEXPIRE;
# take over: HSET; release: HDEL)
REGISTRY_COMMANDS: tuple[str, ...] = ("hset", "hsetnx", "hdel", "pexpire", "hgetall")
INDEX_COMMANDS: tuple[str, ...] = ("zadd",)  # the worker index: its own heartbeat score
STREAM_COMMANDS: tuple[str, ...] = ("xadd",)  # its outgoing streams (MAXLEN ~ included)
ASSIGNMENT_COMMANDS: tuple[str, ...] = ("smembers",)  # the accounts it owns
ACCOUNT_COMMANDS: tuple[str, ...] = ("hget", "hgetall")  # their config
SESSION_COMMANDS: tuple[str, ...] = ("hgetall", "hset", "hincrby")  # their sealed session
# what a worker's client needs on a Redis Cluster besides: redis-py's cluster client
# asks CLUSTER SLOTS for the slot map (at start, after a lost connection or CLUSTERDOWN,
# every fifth MOVED) and COMMAND for where each command's keys are (its subcommands
# only describe the same table; COMMAND GETKEYS is what it asks for a command whose
# keys move), and sends ASKING before a command that an ASK reply sent to the node a
# slot is migrating to; the control channel is a shard channel. Not needed: READONLY
# (no reads from replicas), CLUSTER SHARDS / NODES (redis-py 8.1 asks CLUSTER SLOTS
# only), SPUBLISH (only the Master publishes).
CLUSTER_WORKER_COMMANDS: tuple[str, ...] = (
    "cluster|slots",
    "command",
    "asking",
    "ssubscribe",
    "sunsubscribe",
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


def _selector(patterns: Iterable[str], commands: Iterable[str]) -> str:
    """An ACL selector: ``commands`` allowed on the keys of ``patterns`` (one argument
    of ACL SETUSER, one word of an ACL file line)."""
    return "(" + " ".join([*patterns, *(f"+{c}" for c in commands)]) + ")"


def worker_key_rules(keys: Keys, worker_id: str, account_ids: Iterable[str]) -> list[str]:
    """The key rules of ``worker-<id>`` while it owns ``account_ids``: no key at the top
    level, a selector per kind of key with the commands the worker sends to it. The
    whole set replaces the one before (``resetkeys``, ``clearselectors``), so one ACL
    SETUSER with it changes a user's access in one step."""
    owned = sorted(set(account_ids))
    rules = [
        "resetkeys",
        "clearselectors",
        _selector(["~" + escape_glob(keys.worker(worker_id))], REGISTRY_COMMANDS),
        _selector(["%W~" + escape_glob(keys.workers)], INDEX_COMMANDS),
        _selector(
            ("%W~" + escape_glob(keys.worker_stream(worker_id, k)) for k in STREAM_KINDS),
            STREAM_COMMANDS,
        ),
        # its assignment set, one per bucket on a cluster
        _selector(
            ("%R~" + escape_glob(keys.worker_accounts(worker_id, b)) for b in keys.buckets),
            ASSIGNMENT_COMMANDS,
        ),
    ]
    if owned:
        rules.append(
            _selector(("%R~" + escape_glob(keys.account(a)) for a in owned), ACCOUNT_COMMANDS)
        )
        rules.append(
            _selector(("~" + escape_glob(keys.session(a)) for a in owned), SESSION_COMMANDS)
        )
    return rules


def worker_rules(keys: Keys, worker_id: str, account_ids: Iterable[str] = ()) -> list[str]:
    """Every rule of ``worker-<id>`` but its password (for a cluster when ``keys`` are
    a cluster's: tagged names, and the commands of a cluster client)."""
    commands = (*WORKER_COMMANDS, *(CLUSTER_WORKER_COMMANDS if keys.cluster else ()))
    return [
        "resetchannels",
        "&" + escape_glob(keys.control(worker_id)),
        "-@all",
        *(f"+{c}" for c in commands),
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


def is_fleet_user(name: str) -> bool:
    """A user this module manages: a worker's, the Master's, the operators'."""
    return name.startswith(WORKER_USER_PREFIX) or name in (MASTER_USER, OPERATOR_USER)


def split_rules(line: str) -> list[str]:
    """A user's rules as ``ACL LIST`` prints them, as ACL SETUSER arguments: a selector
    (``(%W~k resetchannels -@all +zadd)``, several words) is one argument. Redis ends a
    selector at the first word that ends with ``)``, and so does this."""
    out: list[str] = []
    selector: list[str] = []
    for word in line.split():
        if selector or (word.startswith("(") and not word.endswith(")")):
            selector.append(word)
            if word.endswith(")"):
                out.append(" ".join(selector))
                selector = []
        else:
            out.append(word)
    if selector:
        out.append(" ".join(selector))
    return out


def _canonical(rule: str) -> str:
    if rule.startswith("(") and rule.endswith(")"):
        return "(" + " ".join(sorted(rule[1:-1].split())) + ")"
    return rule


def same_rules(a: Iterable[str], b: Iterable[str]) -> bool:
    """Whether two of a user's rule lists (as ``ACL LIST`` prints them, whole or split
    into words) say the same: Redis lists a user's commands, in each selector too, in
    an order of its own on each node."""

    def canonical(rules: Iterable[str]) -> list[str]:
        return sorted(_canonical(r) for r in split_rules(" ".join(rules)))

    return canonical(a) == canonical(b)


def _raise_refusals(replies: Iterable[Any]) -> None:
    """An error reply (a rule Redis rejects, NOPERM) is ours to fix: raise it."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply


def _users_reply(reply: Any) -> set[str] | None:
    """ACL USERS' reply as names; None when it was refused (no right to list them, or a
    Redis without ACLs)."""
    if isinstance(reply, rexc.NoPermissionError | rexc.ResponseError):
        return None
    return {text(n) for n in reply}


@dataclass(frozen=True, slots=True)
class Applied:
    """Where a change to a user was made: on how many nodes (1 on one Redis), how many
    of them saved it to their ACL file, and the nodes that could not be reached."""

    nodes: int
    saved: int
    failed: tuple[str, ...] = ()

    @property
    def everywhere(self) -> bool:
        return not self.failed


async def _apply(redis: Redis, commands: Sequence[Command]) -> tuple[list[Any], Applied]:
    """``commands``, then ACL SAVE, on the Redis or on every node of the cluster that
    answers. Returns the replies to ``commands`` (on a cluster: each one's integer
    replies summed over the nodes) and where it was done. A refused command raises;
    BusUnavailable when no node answers."""
    save: Command = ("ACL", "SAVE")
    if not is_cluster(redis):
        async with redis.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            pipe.execute_command(*save)
            replies: list[Any] = await call(pipe.execute(raise_on_error=False))
        _raise_refusals(replies[:-1])
        return replies[:-1], Applied(1, int(not isinstance(replies[-1], Exception)))
    async with cluster_nodes(redis) as nodes:
        results = await on_each(nodes, lambda _node: [*commands, save])
    done = {n: r for n, r in results.items() if not isinstance(r, BusUnavailable)}
    failed = tuple(f"{n}: {r}" for n, r in sorted(results.items()) if n not in done)
    if not done:
        raise BusUnavailable("no node of the cluster could be reached: " + "; ".join(failed))
    for replies in done.values():
        _raise_refusals(replies[:-1])
    saved = sum(not isinstance(r[-1], Exception) for r in done.values())
    summed = [
        sum(int(r[i]) if isinstance(r[i], int) else 0 for r in done.values())
        for i in range(len(commands))
    ]
    return summed, Applied(len(done), saved, failed)


class Grants:
    """Keeps each worker user's read access equal to the accounts it owns now (on every
    node of a cluster)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.store = AccountStore(redis, keys)
        self.cluster = is_cluster(redis)
        self._users: set[str] | None = None
        self._users_at = -_USERS_CACHE_S
        self._run_id: str | None = None
        self._denied_logged = False
        # on a cluster: each node's users (as of _users_at), and the run id each node
        # had when it last got every user
        self._node_users: dict[str, set[str]] = {}
        self._node_runs: dict[str, str] = {}
        self.applied = 0  # how many SETUSER calls were made, for tests and status
        self.restored = 0  # users copied to a node that joined or restarted (a cluster's)

    async def users(self, *, fresh: bool = False) -> set[str]:
        """The Redis users (empty when we may not list them: then none are managed).
        On a cluster: those of any node."""
        now = anyio.current_time()
        if self._users is None or fresh or now - self._users_at > _USERS_CACHE_S:
            if self.cluster:
                self._node_users = await self._read_node_users()
                names: Any = set().union(*self._node_users.values())
            else:
                names = await self._acl_users()
            self._users = {text(n) for n in names}
            self._users_at = now
        return self._users

    async def _acl_users(self) -> Any:
        try:
            return await call(self.redis.acl_users())
        except rexc.NoPermissionError:
            self._log_denied()
        except rexc.ResponseError as exc:  # a Redis without ACLs
            log.debug("ACL USERS failed: %s", exc)
        return []

    def _log_denied(self) -> None:
        if not self._denied_logged:
            log.warning("this Redis user may not list ACL users; grants are not managed")
            self._denied_logged = True

    async def _read_node_users(
        self, nodes: Sequence[ClusterNode] | None = None
    ) -> dict[str, set[str]]:
        """Each reachable node's users (ACL USERS on every node at once)."""
        if nodes is None:
            async with cluster_nodes(self.redis) as every:
                return await self._read_node_users(every)
        out: dict[str, set[str]] = {}
        for name, replies in (await on_each(nodes, lambda _n: [("ACL", "USERS")])).items():
            if isinstance(replies, BusUnavailable):
                log.warning("ACL users of node %s not read: %s", name, replies)
                self._node_runs.pop(name, None)  # it gets everything when it answers
                continue
            users = _users_reply(replies[0])
            if users is None:
                if isinstance(replies[0], rexc.NoPermissionError):
                    self._log_denied()
                continue
            out[name] = users
        return out

    async def worker_ids(self) -> list[str]:
        """The ids of every worker that has a user."""
        return sorted(
            u[len(WORKER_USER_PREFIX) :]
            for u in await self.users(fresh=True)
            if u.startswith(WORKER_USER_PREFIX)
        )

    def _key_rule_commands(
        self, targets: Sequence[str], owned: Sequence[list[str]]
    ) -> dict[str, Command]:
        return {
            worker_id: (
                "ACL",
                "SETUSER",
                worker_user(worker_id),
                *worker_key_rules(self.keys, worker_id, accounts),
            )
            for worker_id, accounts in zip(targets, owned, strict=True)
        }

    async def sync(self, worker_ids: Iterable[str | None]) -> int:
        """Rewrite the key rules of these workers' users from the accounts each owns now,
        in two round trips (on a cluster: on each node that has the user). Returns how
        many users were updated."""
        users = await self.users()
        targets = sorted({w for w in worker_ids if w and worker_user(w) in users})
        if not targets:
            return 0
        owned = await self.store.ids_of_workers(targets)
        commands = self._key_rule_commands(targets, owned)
        if self.cluster:
            await self._sync_nodes(commands)
        else:
            async with self.redis.pipeline(transaction=False) as pipe:
                for command in commands.values():
                    pipe.execute_command(*command)
                await call(pipe.execute())
        self.applied += len(targets)
        log.debug("read access of %s set from their accounts", ", ".join(targets))
        return len(targets)

    async def _sync_nodes(self, commands: dict[str, Command]) -> None:
        """The key rules on every node that has the user (never on one that lacks it:
        that would make a user with no password and no commands). A node that cannot
        be reached now gets every user again once it answers (its run id is forgotten)."""
        held = self._node_users

        def of(node: ClusterNode) -> list[Command]:
            return [c for w, c in commands.items() if worker_user(w) in held.get(node.name, ())]

        async with cluster_nodes(self.redis) as nodes:
            results = await on_each(nodes, of)
        for name, replies in results.items():
            if isinstance(replies, BusUnavailable):
                log.warning(
                    "read access not set on node %s (again once it answers): %s", name, replies
                )
                self._node_runs.pop(name, None)
            else:
                _raise_refusals(replies)

    async def sync_all(self) -> int:
        """Every worker user's grants, e.g. on a Master's start."""
        return await self.sync(await self.worker_ids())

    async def ensure(self) -> bool:
        """Re-apply every grant when Redis restarted since we last did (its run id
        changed); on a cluster, every user on each node that joined or restarted since.
        True when they were applied now."""
        if self.cluster:
            return await self._ensure_nodes()
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

    async def _ensure_nodes(self) -> bool:
        """One CLUSTER NODES and one INFO per node when nothing changed."""
        async with cluster_nodes(self.redis) as nodes:
            return await self._ensure_on(nodes)

    async def _ensure_on(self, nodes: Sequence[ClusterNode]) -> bool:
        runs: dict[str, str] = {}
        for name, replies in (await on_each(nodes, lambda _n: [("INFO", "server")])).items():
            info = replies[0] if not isinstance(replies, BusUnavailable) else replies
            if isinstance(info, dict):
                runs[name] = str(info.get("run_id", ""))
            elif not isinstance(info, rexc.NoPermissionError):
                log.debug("node %s: run id not read: %s", name, info)
        for name in [n for n in self._node_runs if n not in runs]:
            del self._node_runs[name]  # gone or unreachable: everything again when back
        fresh = [n for n in nodes if n.name in runs and self._node_runs.get(n.name) != runs[n.name]]
        if not fresh:
            return False
        reachable = [n for n in nodes if n.name in runs]
        await self._restore(fresh, reachable, runs)
        return True

    async def _restore(
        self, fresh: Sequence[ClusterNode], reachable: Sequence[ClusterNode], runs: dict[str, str]
    ) -> None:
        """Every fleet user on the ``fresh`` nodes: copied (password hashes, flags and
        rules as ``ACL LIST`` shows them) from the settled node that has the most of
        them, then each worker's key rules from what it owns now. With a settled node to
        copy from, a fresh node is made the same: a user whose password or rules differ
        there (changed while it was down) is copied again, and a worker user the settled
        node does not have (removed while it was down, back from an old ACL file) is
        deleted, so a removed worker's password opens no node."""
        held = await self._read_node_users(reachable)
        self._users, self._users_at = set().union(*held.values()), anyio.current_time()
        self._node_users = held
        fresh_names = {n.name for n in fresh}

        def fleet(name: str) -> set[str]:
            return {u for u in held.get(name, ()) if is_fleet_user(u)}

        settled = [n for n in reachable if n.name not in fresh_names and n.name in held]
        donors = settled or [n for n in reachable if n.name in held]
        donor = max(donors, key=lambda n: (len(fleet(n.name)), n.name), default=None)
        lines = await self._user_lines(donor) if donor is not None and fleet(donor.name) else {}
        targets = [n for n in fresh if n.name in held]
        exact = bool(settled) and donor is not None
        present = {n.name: await self._user_lines(n) for n in targets} if exact else {}
        stale = {
            n.name: {
                u for u in present[n.name] if u.startswith(WORKER_USER_PREFIX) and u not in lines
            }
            for n in targets
            if exact
        }
        wanted = {n.name: set(lines) | (fleet(n.name) - stale.get(n.name, set())) for n in targets}
        workers = sorted(
            {
                u[len(WORKER_USER_PREFIX) :]
                for us in wanted.values()
                for u in us
                if u.startswith(WORKER_USER_PREFIX)
            }
        )
        owned = await self.store.ids_of_workers(workers)
        key_rules = self._key_rule_commands(workers, owned)

        def differing(node: str) -> set[str]:
            """Users the node has, but not as the settled node has them."""
            there = present.get(node, {})
            return {
                u for u, rules in lines.items() if u in there and not same_rules(there[u], rules)
            }

        def commands(node: ClusterNode) -> list[Command]:
            copies: list[Command] = [
                ("ACL", "SETUSER", name, "reset", *rules)
                for name, rules in lines.items()
                if name not in held[node.name] or name in differing(node.name)
            ]
            copies += [("ACL", "DELUSER", u) for u in sorted(stale.get(node.name, ()))]
            return copies + [c for w, c in key_rules.items() if worker_user(w) in wanted[node.name]]

        for name, replies in (await on_each(targets, commands)).items():
            if isinstance(replies, BusUnavailable):
                log.warning("users not restored on node %s (next pass): %s", name, replies)
                continue
            _raise_refusals(replies)
            copied = len(wanted[name] - held[name])
            corrected, removed = len(differing(name)), len(stale.get(name, ()))
            self.restored += copied + corrected + removed
            self.applied += len(replies) - copied - corrected - removed
            self._node_users[name] = (held[name] - stale.get(name, set())) | wanted[name]
            self._node_runs[name] = runs[name]
            log.log(
                logging.INFO if replies else logging.DEBUG,
                "node %s (run %s): %d user(s) copied, %d corrected, %d removed, read access "
                "of %d worker(s) applied",
                name,
                runs[name][:8],
                copied,
                corrected,
                removed,
                len(replies) - copied - corrected - removed,
            )

    async def _user_lines(self, node: ClusterNode) -> dict[str, list[str]]:
        """The fleet's users on ``node`` as ``ACL LIST`` has them: name → every rule
        (flags, password hashes, channels, commands, keys, each selector as one rule),
        which ACL SETUSER takes back."""
        reply = (await on_node(node, [("ACL", "LIST")]))[0]
        _raise_refusals([reply])
        out: dict[str, list[str]] = {}
        for line in reply:
            parts = text(line).split(" ")
            if len(parts) >= 2 and parts[0] == "user" and is_fleet_user(parts[1]):
                out[parts[1]] = split_rules(" ".join(parts[2:]))
        return out


async def add_worker(redis: Redis, keys: Keys, worker_id: str, password: str) -> Applied:
    """Create or update ``worker-<id>`` with ``password`` and the rules of a worker that
    owns what the assignments say it owns now, on the Redis or on every node of the
    cluster. ``Applied.saved``: on how many Redis saved it to its ACL file (0: none has
    one, and the user lasts until Redis restarts)."""
    [owned] = await AccountStore(redis, keys).ids_of_workers([worker_id])
    rules = ["reset", "on", password_hash(password), *worker_rules(keys, worker_id, owned)]
    _replies, applied = await _apply(redis, [("ACL", "SETUSER", worker_user(worker_id), *rules)])
    return applied


async def remove_worker(redis: Redis, worker_id: str) -> tuple[bool, Applied]:
    """Delete ``worker-<id>`` (its connections are closed by Redis), on the Redis or on
    every node of the cluster. Returns (it existed on some node, where it was done)."""
    replies, applied = await _apply(redis, [("ACL", "DELUSER", worker_user(worker_id))])
    return int(replies[0]) > 0, applied


async def save(redis: Redis) -> bool:
    """ACL SAVE when Redis runs with an ACL file; False when it has none."""
    try:
        await call(redis.acl_save())
    except rexc.ResponseError as exc:
        log.debug("ACL SAVE: %s", exc)
        return False
    return True


def _masked(lines: Iterable[Any], wanted: set[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        parts = text(line).split(" ")
        if len(parts) < 2 or parts[0] != "user":
            continue
        name = parts[1]
        if (wanted is None and is_fleet_user(name)) or (wanted is not None and name in wanted):
            shown = ["#…" if p.startswith("#") else ">…" if p.startswith(">") else p for p in parts]
            out[name] = " ".join(shown[2:])
    return out


async def rules_of(redis: Redis, names: Iterable[str] | None = None) -> dict[str, str]:
    """User name → its rules as ``ACL LIST`` shows them, password hashes masked.
    Without ``names``: the fleet's users (workers, Master, operator). On a cluster: as
    the first node that has the user shows them (``rules_on_nodes`` for every node)."""
    wanted = set(names) if names is not None else None
    if is_cluster(redis):
        out: dict[str, str] = {}
        for rules in (await rules_on_nodes(redis, wanted)).values():
            if isinstance(rules, dict):
                out = {**rules, **out}
        return out
    return _masked(await call(redis.acl_list()), wanted)


async def rules_on_nodes(
    redis: Redis, names: Iterable[str] | None = None
) -> dict[str, dict[str, str] | BusUnavailable]:
    """Each cluster node's :func:`rules_of` (its BusUnavailable when it cannot be read)."""
    wanted = set(names) if names is not None else None
    async with cluster_nodes(redis) as nodes:
        results = await on_each(nodes, lambda _n: [("ACL", "LIST")])
    out: dict[str, dict[str, str] | BusUnavailable] = {}
    for name, replies in sorted(results.items()):
        if isinstance(replies, BusUnavailable):
            out[name] = replies
        else:
            _raise_refusals(replies)
            out[name] = _masked(replies[0], wanted)
    return out
