"""Redis clients, and the one place redis-py connection errors become BusUnavailable."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
from redis import exceptions as rexc
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

from .errors import BusUnavailable, ConfigurationError, HiscrmError, Unavailable
from .settings import MASK, BusSettings, url_password

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
    rexc.ClusterDownError,
)
# what a resilient loop survives by backing off and starting over
RECOVERABLE: tuple[type[BaseException], ...] = (Unavailable, *CONNECTION_ERRORS)


def is_transient(exc: BaseException) -> bool:
    """True for an error reply that goes away by itself (OOM, BUSY, READONLY, …)."""
    if isinstance(exc, _TRANSIENT_CLASSES):
        return True
    if not isinstance(exc, rexc.ResponseError):
        return False
    text = str(exc).lstrip()
    # a script's error carries the reply of the command that failed inside it
    if text.startswith("Error running script") or "script:" in text:
        return any(f"{code} " in text for code in TRANSIENT_REPLIES)
    return text.split(" ", 1)[0] in TRANSIENT_REPLIES


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
    except rexc.ResponseError as exc:
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
    if settings.redis_url.startswith("rediss://") and _dropped_after_connect(exc):
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
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def scrub(text: str, settings: BusSettings) -> str:
    """``text`` with every password ``settings`` know replaced by ``***``."""
    for secret in (settings.password(), url_password(settings.redis_url)):
        if secret:
            text = text.replace(secret, MASK)
    return text
