"""Redis clients, and the one place redis-py connection errors become BusUnavailable.

A cluster URL (``redis+cluster://``) gets redis-py's asyncio ``RedisCluster``, typed as
``Redis`` for the rest of the code base (see ``make_client``); code that must act
differently on a cluster asks ``is_cluster``."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from .errors import BusUnavailable, ConfigurationError, HiscrmError, Unavailable
from .settings import MASK, BusSettings, url_password, url_username

T = TypeVar("T")
# errors that mean "Redis is not there right now", as opposed to a bad command
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError,
    rexc.TimeoutError,
    rexc.BusyLoadingError,
    ConnectionError,
    OSError,
    TimeoutError,
)
# error replies that mean "Redis cannot do this right now" (full, paused behind a
# script, a replica, failing over): the command was fine, so wait and try again
TRANSIENT_REPLIES: tuple[str, ...] = (
    "OOM",
    "BUSY",
    "LOADING",
    "READONLY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
    "MISCONF",
)
_TRANSIENT_CLASSES: tuple[type[BaseException], ...] = (
    rexc.OutOfMemoryError,
    rexc.ReadOnlyError,
    rexc.TryAgainError,
    # a cluster in the middle of a failover or a slot move: CLUSTERDOWN / MASTERDOWN
    # replies, a slot no node serves in the client's map yet, redirections that went
    # round until the client's TTL ran out (redis-py's ClusterError "TTL exhausted")
    rexc.ClusterError,
    rexc.SlotNotCoveredError,
)
# what the cluster client raises, as RedisClusterException (no RedisError), when none of
# the nodes it knows answers or their maps leave slots uncovered: Redis is not there now
_CLUSTER_UNREACHABLE = ("Redis Cluster cannot be connected", "All slots are not covered")
# what a resilient loop survives by backing off and starting over
RECOVERABLE: tuple[type[BaseException], ...] = (Unavailable, *CONNECTION_ERRORS)


def is_transient(exc: BaseException) -> bool:
    """True for an error reply that goes away by itself (OOM, BUSY, READONLY, …), and
    for a cluster that cannot serve the command until its layout settles."""
    if isinstance(exc, _TRANSIENT_CLASSES) or _cluster_unreachable(exc):
        return True
    if not isinstance(exc, rexc.ResponseError):
        return False
    text = str(exc).lstrip()
    # a script's error carries the reply of the command that failed inside it
    if text.startswith("Error running script") or "script:" in text:
        return any(f"{code} " in text for code in TRANSIENT_REPLIES)
    return text.split(" ", 1)[0] in TRANSIENT_REPLIES


def _cluster_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, rexc.RedisClusterException) and str(exc).startswith(_CLUSTER_UNREACHABLE)


def is_cluster(redis: Redis) -> bool:
    """True when ``redis`` is a cluster client (``make_client`` of a cluster URL)."""
    return isinstance(redis, RedisCluster)


def text(value: bytes | str) -> str:
    """A Redis reply as text (what does not decode as UTF-8 is replaced, never raised)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


async def call(value: Awaitable[T]) -> T:
    """Await a redis-py call, translating connection failures and transient error
    replies (OOM, BUSY, READONLY, …) to BusUnavailable."""
    try:
        return await value
    except CONNECTION_ERRORS as exc:
        raise BusUnavailable(f"Redis is unreachable: {exc}") from exc
    except (rexc.ResponseError, rexc.ClusterError, rexc.RedisClusterException) as exc:
        if is_transient(exc):
            raise BusUnavailable(f"Redis cannot serve us right now: {_reply(exc)}") from exc
        raise


async def call_each(value: Awaitable[list[Any]]) -> list[Any]:
    """Await a pipeline run with ``raise_on_error=False``: one command's error reply
    (WRONGTYPE, NOPERM) is that command's result, but an outage (a transient reply or a
    lost connection in any of them) is everyone's: BusUnavailable."""
    replies = await call(value)
    for reply in replies:
        if isinstance(reply, Exception) and (
            is_transient(reply) or isinstance(reply, CONNECTION_ERRORS)
        ):
            raise BusUnavailable(f"Redis cannot serve us right now: {_reply(reply)}") from reply
    return replies


def _reply(exc: BaseException) -> str:
    code = getattr(exc, "status_code", None)
    text = str(exc)
    return f"{code} {text}" if code and not text.startswith(str(code)) else text


def make_client(settings: BusSettings, *, retries: bool = True) -> Redis:
    """A client for ``settings.redis_url``, with the password and TLS files of
    ``settings`` (no connection is made yet).

    ``retries=False`` is for loops that run their own reconnect logic (the control
    subscription): a failure must surface at once so the loop can reconcile.
    """
    retry = (
        Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3)
        if retries
        else Retry(NoBackoff(), 0)
    )
    if settings.cluster:
        return _cluster_client(settings, retry)
    try:
        return Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.redis_timeout_s,
            # every blocking read we issue blocks for at most a second or two, so a
            # read that takes longer means a dead path, not a slow answer
            socket_timeout=settings.redis_timeout_s,
            retry=retry,
            health_check_interval=0,
            **settings.connection_options(),
        )
    except (ValueError, TypeError) as exc:
        # redis-py may quote a piece of the URL (a "port" that is part of a password)
        reason = scrub(str(exc), settings)
        raise BusUnavailable(f"Redis URL {settings.shown_url} is not valid: {reason}") from None


def _credentials(settings: BusSettings) -> dict[str, Any]:
    """The user (when the URL names one other than ``default``: a password alone logs
    in as ``default``) and the password, as keyword arguments of a client that is not
    built from the URL."""
    options: dict[str, Any] = {}
    if url_username(settings.redis_url) != "default":
        options["username"] = settings.redis_user
    password = settings.password() or url_password(settings.redis_url)
    if password is not None:
        options["password"] = password
    return options


def _node_options(settings: BusSettings) -> dict[str, Any]:
    """Keyword arguments every connection to a cluster node takes: credentials, TLS,
    timeouts (as ``Redis.from_url`` gets them for one Redis)."""
    options = {**settings.connection_options(), **_credentials(settings)}
    if settings.tls:
        options["ssl"] = True
    return {
        "socket_connect_timeout": settings.redis_timeout_s,
        "socket_timeout": settings.redis_timeout_s,
        "health_check_interval": 0,
        **options,
    }


def _cluster_client(settings: BusSettings, retry: Retry) -> Redis:
    nodes = [ClusterNode(host, port) for host, port in settings.startup_nodes]
    client = RedisCluster(startup_nodes=nodes, retry=retry, **_node_options(settings))
    # typed as Redis for the whole code base: the command methods we call have the same
    # signatures on both; pipelines and pub/sub differ, and the code that uses them
    # branches on is_cluster()
    return cast(Redis, client)


async def slot_owner(redis: Redis, key: str) -> tuple[str, int]:
    """``(host, port)`` of the primary that serves ``key``'s slot, as the cluster client
    ``redis`` knows it (a client's first command, or this, asks the cluster for its map;
    a fresh client has the current one). SlotNotCoveredError when no node serves it."""
    cluster = cast(RedisCluster, redis)
    await cluster.initialize()
    node = cluster.get_node_from_key(key)
    if node is None:  # only for a replica; typed Optional for that
        raise rexc.SlotNotCoveredError(f"no node serves the slot of {key}")
    return node.host, int(node.port)


def make_node_client(settings: BusSettings, host: str, port: int) -> Redis:
    """A plain client of one cluster node (no retries: for loops that reconnect
    themselves, like the control subscription's sharded pub/sub connection)."""
    return Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), **_node_options(settings))


async def connect(settings: BusSettings) -> Redis:
    """A client that has answered PING, or one clear sentence: ``BusUnavailable`` when
    Redis cannot be reached, ``ConfigurationError`` when it can but refuses these
    credentials or this TLS set-up (nothing a retry would change)."""
    client = make_client(settings)
    try:
        await client.ping()
    except Exception as exc:
        with anyio.CancelScope(shield=True):
            await client.aclose()
        error = connect_error(settings, exc)
        if error is None:
            raise
        raise error from None
    return client


def connect_error(settings: BusSettings, exc: BaseException) -> HiscrmError | None:
    """The one sentence for a failed first PING, or None when ``exc`` is no Redis or
    network failure. Every URL in it is masked, every password scrubbed."""
    url = settings.shown_url
    user = settings.redis_user
    gave_password = settings.password() is not None or url_password(settings.redis_url)
    if settings.cluster:
        # the cluster client wraps what its first node said (RedisClusterException
        # "cannot be connected" from the AuthenticationError, say): look inside
        error = _cluster_connect_error(settings, exc)
        if error is not None:
            return error
    if isinstance(exc, rexc.AuthenticationError):
        if not gave_password:
            return ConfigurationError(
                f"Redis at {url} requires a password and none was given: put it in a "
                "file and set HISCRM_REDIS_PASSWORD_FILE (the user name goes in the URL)"
            )
        return ConfigurationError(
            f"authentication failed for user {user} at {url}: wrong password, or no such "
            "user, or the user is disabled"
        )
    if isinstance(exc, rexc.NoPermissionError):
        return ConfigurationError(
            f"user {user} at {url} may not run PING ({scrub(str(exc), settings)}): "
            "its ACL rules must allow +ping"
        )
    tls = _ssl_cause(exc)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return ConfigurationError(
            f"TLS verification of {url} failed: {tls.verify_message} (does "
            "HISCRM_REDIS_CA_FILE name the CA that signed the server's certificate?)"
        )
    if tls is not None:
        reason = tls.reason or str(tls)
        if "CERTIFICATE_REQUIRED" in reason:
            reason = (
                "the server asks for a client certificate "
                "(set HISCRM_REDIS_CERT_FILE and HISCRM_REDIS_KEY_FILE)"
            )
        return ConfigurationError(f"TLS handshake with {url} failed: {reason}")
    if settings.tls and _dropped_after_connect(exc):
        # TLS 1.3: a server that wants a client certificate may just close the
        # connection after the client's half of the handshake, with no alert we read
        hint = (
            " (does the server ask for a client certificate? set HISCRM_REDIS_CERT_FILE "
            "and HISCRM_REDIS_KEY_FILE)"
            if settings.redis_cert_file is None
            else ""
        )
        return ConfigurationError(
            f"TLS handshake with {url} failed: the server closed the connection{hint}"
        )
    if isinstance(exc, (BusUnavailable, *CONNECTION_ERRORS)):
        return BusUnavailable(
            f"Cannot reach Redis at {url} "
            "(is redis-server running? set HISCRM_REDIS_URL or --redis-url)"
        )
    if isinstance(exc, rexc.RedisError):
        return BusUnavailable(f"Redis at {url} refused us: {scrub(str(exc), settings)}")
    return None


def _cluster_connect_error(settings: BusSettings, exc: BaseException) -> HiscrmError | None:
    """The sentences only a cluster needs; None leaves ``exc`` (or, for an error that
    says more inside, that inner error) to the sentences of one Redis."""
    url = settings.shown_url
    denied = _in_chain(exc, rexc.NoPermissionError)
    if denied is not None:
        return ConfigurationError(
            f"user {settings.redis_user} at {url} may not run a command a cluster client "
            f"needs ({scrub(str(denied), settings)}): its ACL rules must allow +ping, "
            "+cluster|slots and +command"
        )
    for inner in (rexc.AuthenticationError, ssl.SSLError):
        found = _in_chain(exc, inner)
        if found is not None and found is not exc:
            return connect_error(settings, found)
    if _in_chain(exc, rexc.RedisClusterException, "Cluster mode is not enabled"):
        return ConfigurationError(
            f"Redis at {url} is not a cluster (cluster mode is not enabled): name one "
            "Redis with redis:// or rediss://"
        )
    if _cluster_unreachable(exc) and settings.tls and _dropped_after_connect(exc):
        return None  # the TLS sentence of one Redis
    if _cluster_unreachable(exc) or isinstance(exc, rexc.SlotNotCoveredError):
        return BusUnavailable(
            f"Cannot reach Redis at {url} "
            "(is redis-server running? set HISCRM_REDIS_URL or --redis-url)"
        )
    return None


def _in_chain(
    exc: BaseException, kind: type[BaseException], starts: str = ""
) -> BaseException | None:
    """The first exception of ``kind`` (whose text starts with ``starts``) among ``exc``
    and its causes and contexts."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind) and str(current).startswith(starts):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _dropped_after_connect(exc: BaseException) -> bool:
    """The TCP connection was made and then closed by the server (not refused, not a
    timeout: those mean Redis is not there)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError | TimeoutError | rexc.TimeoutError):
            return False
        text_ = str(current).lower()
        if "refused" in text_ or "connect call failed" in text_ or "timeout" in text_:
            return False
        if isinstance(current, ConnectionResetError | BrokenPipeError) or (
            "closed by server" in text_ or "connection reset" in text_ or "eof" in text_
        ):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a redis-py ConnectionError, if there is one."""
    found = _in_chain(exc, ssl.SSLError)
    return found if isinstance(found, ssl.SSLError) else None


def scrub(text: str, settings: BusSettings) -> str:
    """``text`` with every password ``settings`` know replaced by ``***``."""
    for secret in (settings.password(), url_password(settings.redis_url)):
        if secret:
            text = text.replace(secret, MASK)
    return text
