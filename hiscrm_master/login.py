"""QR logins: start one through the account's worker, follow its events, and on success
save what the platform told us, atomically, and notify the worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.connection import call, text
from hiscrm_bus.control import publish
from hiscrm_bus.errors import AccountNotFound, HiscrmError, InvalidAccountConfig
from hiscrm_bus.messages import (
    LoginExpired,
    LoginFailed,
    LoginProgress,
    LoginQrCode,
    LoginRequest,
    LoginSuccess,
    new_id,
)
from hiscrm_bus.pending import Outcome, PendingTracker
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import StreamFollower, last_entry_id
from hiscrm_bus.workers import WorkerRegistry

from .updates import Updates

SESSION_TTL_S = 24 * 3600
RESEND_S = 5.0  # re-send a login request the worker has not answered for this long
# the worker ends every session itself (after the request's timeout); the margin covers
# the last event's trip
END_MARGIN_S = 15.0
APPLY_WAIT_S = 30.0  # how long the login's config update may take to be applied

LoginEvent = LoginQrCode | LoginProgress | LoginSuccess | LoginFailed


UnavailableReason = Literal["unknown_account", "no_worker", "worker_offline"]


class LoginUnavailable(HiscrmError):
    """The login cannot start (or go on): no such account, no owner, or its worker is
    offline; ``reason`` says which, ``worker_id`` whose worker (if it has one)."""

    def __init__(self, message: str, reason: UnavailableReason, worker_id: str = "") -> None:
        super().__init__(message)
        self.reason: UnavailableReason = reason
        self.worker_id = worker_id


@dataclass(frozen=True, slots=True)
class LoginStarted:
    """A login asked of ``worker_id``, and where to follow it from: its events come
    after entry ``events_from`` of the worker's events stream, the outcome of the config
    update it leads to after ``outcomes_from``, for a version above ``config_version``."""

    request: LoginRequest
    worker_id: str
    events_from: str = "0-0"
    outcomes_from: str = "0-0"
    config_version: int = 0


async def start_login(
    redis: Redis,
    settings: BusSettings,
    account_id: str,
    timeout_s: float,
    sender: str,
    *,
    placement_wait_s: float = 0.0,
) -> LoginStarted:
    """Ask the account's worker to open the login page. An account just added may have
    no worker yet: wait up to ``placement_wait_s`` for the Master to place it."""
    updates = Updates(redis, settings, sender)

    async def read() -> AccountConfig:
        try:
            return await updates.store.get(account_id)
        except AccountNotFound as exc:
            raise LoginUnavailable(str(exc), "unknown_account") from None

    account = await read()
    with anyio.move_on_after(placement_wait_s):
        while account.worker_id is None:
            await anyio.sleep(0.1)  # placement is the Master's next pass; poll it
            account = await read()
    if account.worker_id is None:
        raise LoginUnavailable(
            f"account {account_id} has no worker yet; is a Master running?", "no_worker"
        )
    if await WorkerRegistry(redis, settings.keys).get(account.worker_id) is None:
        raise LoginUnavailable(
            f"worker {account.worker_id} of account {account_id} is offline; start it first",
            "worker_offline",
            account.worker_id,
        )
    request = LoginRequest(
        sender=sender, session_id=new_id(), account_id=account_id, timeout_s=timeout_s
    )
    # the cursors are taken before the request leaves: nothing it causes comes earlier
    started = LoginStarted(
        request,
        account.worker_id,
        events_from=await last_entry_id(
            redis, settings.keys.worker_stream(account.worker_id, "events")
        ),
        outcomes_from=await PendingTracker(redis, settings).last_outcome_id(),
        config_version=account.config_version,
    )
    await record_session(
        redis,
        settings,
        request.session_id,
        account_id=account_id,
        worker_id=account.worker_id,
        status="requested",
        sender=sender,
        timeout_s=str(timeout_s),
        events_from=started.events_from,
        outcomes_from=started.outcomes_from,
        config_version=started.config_version,
    )
    if not await resend_login(redis, settings, started):
        raise LoginUnavailable(
            f"worker {account.worker_id} is not listening on its channel",
            "worker_offline",
            account.worker_id,
        )
    log.info(
        "login %s for %s requested from worker %s",
        request.session_id,
        account_id,
        account.worker_id,
    )
    return started


async def resend_login(redis: Redis, settings: BusSettings, started: LoginStarted) -> bool:
    """(Re)publish the request; pub/sub may lose it, the worker ignores a duplicate.
    True if the worker's channel had a subscriber."""
    return bool(await publish(redis, settings, started.worker_id, started.request))


async def login_session(
    redis: Redis, settings: BusSettings, session_id: str
) -> LoginStarted | None:
    """The login ``start_login`` started as ``session_id`` (from its record, kept for
    a day), or None when there is no such record."""
    raw: Any = await call(redis.hgetall(settings.keys.login(session_id)))
    d = {text(k): text(v) for k, v in raw.items()}
    try:
        request = LoginRequest(
            sender=d["sender"],
            session_id=session_id,
            account_id=d["account_id"],
            timeout_s=float(d["timeout_s"]),
        )
        return LoginStarted(
            request,
            d["worker_id"],
            events_from=d["events_from"],
            outcomes_from=d["outcomes_from"],
            config_version=int(d["config_version"]),
        )
    except (KeyError, ValueError):
        return None  # none, or one recorded before logins kept their cursors


async def follow_login(
    redis: Redis,
    settings: BusSettings,
    started: LoginStarted,
    after: str | None = None,
    *,
    resend_s: float = RESEND_S,
    watch_worker: bool = False,
) -> AsyncGenerator[LoginEvent]:
    """The login's events as its worker writes them (from after entry ``after`` of the
    worker's events stream, by default where the login started), up to and including
    its LoginSuccess or LoginFailed. Until the worker is heard from, the request is
    re-sent every ``resend_s``: pub/sub may have lost it (the worker ignores a
    duplicate). With ``watch_worker``, a worker gone from the registry (its heartbeat
    expired: it died or stopped) ends the login: LoginUnavailable, checked as often.
    No deadline of its own: the caller bounds it (the worker ends every session after
    the request's timeout; allow END_MARGIN_S more)."""
    session_id, worker_id = started.request.session_id, started.worker_id
    events = StreamFollower(redis)
    events.follow(
        settings.keys.worker_stream(worker_id, "events"),
        started.events_from if after is None else after,
    )
    registry = WorkerRegistry(redis, settings.keys)
    heard = False
    check_at = anyio.current_time() + resend_s
    while True:
        if anyio.current_time() >= check_at:
            if watch_worker and await registry.get(worker_id) is None:
                raise LoginUnavailable(
                    f"worker {worker_id} of account {started.request.account_id} went "
                    "offline during the login",
                    "worker_offline",
                    worker_id,
                )
            if not heard:
                await resend_login(redis, settings, started)
            check_at = anyio.current_time() + resend_s
        for _stream, message in await events.read():
            if not isinstance(message, LoginEvent) or message.session_id != session_id:
                continue
            heard = True
            yield message
            if isinstance(message, LoginSuccess | LoginFailed):
                return


async def wait_login_applied(
    redis: Redis, settings: BusSettings, started: LoginStarted, timeout_s: float = APPLY_WAIT_S
) -> Outcome | None:
    """After a LoginSuccess: the outcome of the config update that hands the worker its
    new platform_user_id (applied, rejected or failed), or None at the deadline."""
    return await PendingTracker(redis, settings).wait_account_outcome(
        started.request.account_id, started.config_version, started.outcomes_from, timeout_s
    )


async def record_session(
    redis: Redis, settings: BusSettings, session_id: str, **fields: str | int
) -> None:
    key = settings.keys.login(session_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, SESSION_TTL_S)
        await call(pipe.execute())


async def on_login_event(
    redis: Redis, settings: BusSettings, event: LoginQrCode | LoginProgress | LoginFailed
) -> None:
    """Keep the session's state for operators; the CLI follows the events themselves."""
    extra: dict[str, str | int] = {}
    if isinstance(event, LoginQrCode):
        status, extra = "qr_shown", {"refresh": event.refresh}
        log.info(
            "login %s for %s: QR code %s on worker %s",
            event.session_id,
            event.account_id,
            "shown" if not event.refresh else "refreshed",
            event.worker_id,
        )
    elif isinstance(event, LoginProgress):
        status = event.status
        log.info("login %s for %s: %s", event.session_id, event.account_id, event.status)
    else:
        status, extra = "failed", {"reason": event.reason, "error": event.error}
        log.warning(
            "login %s for %s failed (%s): %s",
            event.session_id,
            event.account_id,
            event.reason,
            event.error,
        )
    await record_session(redis, settings, event.session_id, status=status, **extra)


log = logging.getLogger(__name__)


async def on_login_success(
    updates: Updates, event: LoginSuccess, *, owner: str | None = None
) -> bool:
    """One atomic hash update (platform_user_id, login_status, user_info, version bump),
    then ``master:account:config_update`` (reason login_success) to the owner, tracked.
    A login for an unknown account or with an empty user id is refused whole. With
    ``owner``, the write happens only if that worker owns the account at that moment
    (NotOwner otherwise, nothing written)."""
    account_id = event.account_id
    user_id = event.platform_user_id.strip()
    if not user_id:
        log.warning(
            "login success for %s from worker %s refused: empty platform_user_id",
            account_id,
            event.worker_id,
        )
        return False
    changes = {
        "platform_user_id": user_id,
        "login_status": "logged_in",
        "user_info": event.user_info,
    }
    try:
        result, sent = await updates.change(
            account_id, changes, "login_success", expect_owner=owner
        )
    except AccountNotFound:
        log.warning("login success for unknown account %s refused", account_id)
        return False
    except InvalidAccountConfig as exc:
        log.warning("login success for %s refused: %s", account_id, exc)
        return False
    log.info(
        "login success for %s: platform_user_id %s saved as version %d%s",
        account_id,
        user_id,
        result.version,
        f"; update {sent.update_id} sent to worker {result.worker_id}" if sent else "",
    )
    return True


async def on_login_expired(updates: Updates, event: LoginExpired) -> bool:
    """Record that the account's session expired, as a versioned update its worker
    applies like any other (its task then waits for a login instead of retrying a dead
    session). Only the owner's word counts; an account already expired is left as is.
    True if the account was marked now."""
    try:
        account = await updates.store.get(event.account_id)
    except (AccountNotFound, InvalidAccountConfig):
        return False
    if account.login_status == "expired" or account.worker_id != event.worker_id:
        return False
    try:
        result, sent = await updates.change(
            event.account_id,
            {"login_status": "expired"},
            "login_expired",
            expect_owner=event.worker_id,
        )
    except (AccountNotFound, InvalidAccountConfig) as exc:
        # removed since the read, or a version that cannot be raised: nothing to mark
        log.warning("account %s: its expired login not recorded: %s", event.account_id, exc)
        return False
    log.warning(
        "account %s: its login expired (%s); version %d%s; log it in: hiscrm login %s",
        event.account_id,
        event.reason or "the platform asked for a login",
        result.version,
        f", update {sent.update_id} sent to worker {result.worker_id}" if sent else "",
        event.account_id,
    )
    return True
