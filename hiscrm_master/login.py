"""Login success: save what the platform told us, atomically, and notify the worker."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.connection import call
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
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.workers import WorkerRegistry

from .updates import Updates

SESSION_TTL_S = 24 * 3600


class LoginUnavailable(HiscrmError):
    """The login cannot start: no such account, no owner, or its worker is offline."""


@dataclass(frozen=True, slots=True)
class LoginStarted:
    request: LoginRequest
    worker_id: str


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
            raise LoginUnavailable(str(exc)) from None

    account = await read()
    with anyio.move_on_after(placement_wait_s):
        while account.worker_id is None:
            await anyio.sleep(0.1)  # placement is the Master's next pass; poll it
            account = await read()
    if account.worker_id is None:
        raise LoginUnavailable(f"account {account_id} has no worker yet; is a Master running?")
    if await WorkerRegistry(redis, settings.keys).get(account.worker_id) is None:
        raise LoginUnavailable(
            f"worker {account.worker_id} of account {account_id} is offline; start it first"
        )
    request = LoginRequest(
        sender=sender, session_id=new_id(), account_id=account_id, timeout_s=timeout_s
    )
    await record_session(
        redis,
        settings,
        request.session_id,
        account_id=account_id,
        worker_id=account.worker_id,
        status="requested",
    )
    started = LoginStarted(request, account.worker_id)
    if not await resend_login(redis, settings, started):
        raise LoginUnavailable(f"worker {account.worker_id} is not listening on its channel")
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
    result, sent = await updates.change(
        event.account_id, {"login_status": "expired"}, "login_expired", expect_owner=event.worker_id
    )
    log.warning(
        "account %s: its login expired (%s); version %d%s; log it in: hiscrm login %s",
        event.account_id,
        event.reason or "the platform asked for a login",
        result.version,
        f", update {sent.update_id} sent to worker {result.worker_id}" if sent else "",
        event.account_id,
    )
    return True
