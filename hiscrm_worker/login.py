"""QR logins on the worker: open the platform's login page, report the QR code and the
progress to the Master, and end in a login success or a login-failed event, never a
hung session. Only the platform user id and public profile leave the worker; the
browser session is kept by the browser pool (sealed in Redis when the worker has a
session key)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Literal

import anyio
from pydantic import ValidationError

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.errors import AccountNotFound, InvalidAccountConfig, Unavailable
from hiscrm_bus.limits import clip
from hiscrm_bus.messages import LoginFailed, LoginProgress, LoginQrCode, LoginRequest, LoginSuccess
from hiscrm_bus.resilience import Episode
from hiscrm_bus.settings import BusSettings

from .outbox import Outbox
from .platforms import LoginFailedError, Platform, PlatformError

log = logging.getLogger(__name__)
FailReason = Literal["expired", "timeout", "error", "busy", "unsupported"]


class _Reporter:
    def __init__(self, runner: LoginRunner, request: LoginRequest) -> None:
        self.outbox = runner.outbox
        self.worker_id = runner.worker_id
        self.request = request

    async def qr(self, png: bytes, refresh: int) -> None:
        log.info(
            "login %s for %s: QR code %s",
            self.request.session_id,
            self.request.account_id,
            "shown" if refresh == 0 else f"refreshed ({refresh})",
        )
        self.outbox.send(
            "events",
            LoginQrCode(
                sender=self.worker_id,
                session_id=self.request.session_id,
                account_id=self.request.account_id,
                worker_id=self.worker_id,
                png_b64=base64.b64encode(png).decode(),
                refresh=refresh,
            ),
        )

    async def progress(self, status: Literal["page_opened", "scanned"]) -> None:
        log.info("login %s for %s: %s", self.request.session_id, self.request.account_id, status)
        self.outbox.send(
            "events",
            LoginProgress(
                sender=self.worker_id,
                session_id=self.request.session_id,
                account_id=self.request.account_id,
                worker_id=self.worker_id,
                status=status,
            ),
        )


class LoginRunner:
    """Runs QR logins for the worker's accounts, one per account at a time, and reports
    each step through the outbox."""

    def __init__(
        self,
        store: AccountStore,
        platforms: Mapping[str, Platform],
        worker_id: str,
        outbox: Outbox,
        settings: BusSettings,
    ) -> None:
        self.store = store
        self.platforms = platforms
        self.worker_id = worker_id
        self.outbox = outbox
        self.settings = settings
        self.active: dict[str, str] = {}  # account id → session id of its running login

    async def run(self, request: LoginRequest) -> None:
        """Run one login to its end: a LoginSuccess or a LoginFailed. Never raises but
        on cancellation: the worker runs logins beside its other tasks, and one login's
        failure (Redis down, a poisoned account) must not end them."""
        account_id = request.account_id
        running = self.active.get(account_id)
        if running == request.session_id:
            # the sender re-sent a request it heard nothing about yet: one login runs
            log.debug("login %s for %s: duplicate request ignored", running, account_id)
            return
        if running is not None:
            self._failed(request, "busy", "a login for this account is already running")
            return
        self.active[account_id] = request.session_id
        try:
            await self._run(request)
        except Exception as exc:
            log.exception("login %s for %s crashed", request.session_id, account_id)
            self._failed(request, "error", f"{type(exc).__name__}: {exc}")
        finally:
            del self.active[account_id]

    async def _account(self, request: LoginRequest) -> AccountConfig | None:
        """The account to log in, or None once a LoginFailed says why not. Redis being
        unavailable is waited out, with back-off, for as long as the login may take."""
        episode = Episode(
            log,
            f"login {request.session_id} for {request.account_id}: reading the account",
            self.settings,
        )
        unavailable: Exception | None = None
        with anyio.move_on_after(request.timeout_s):
            while True:
                try:
                    account = await self.store.get(request.account_id)
                except Unavailable as exc:
                    unavailable = exc
                    await anyio.sleep(episode.failed(exc))
                    continue
                except (AccountNotFound, InvalidAccountConfig) as exc:
                    self._failed(request, "error", str(exc))
                    return None
                except Exception as exc:  # an error reply: WRONGTYPE, NOPERM
                    self._failed(
                        request,
                        "error",
                        f"the account could not be read ({type(exc).__name__}: {exc})",
                    )
                    return None
                episode.ok()
                return account
        self._failed(
            request,
            "error",
            f"the account could not be read within {request.timeout_s:g}s "
            f"({unavailable or 'Redis did not answer'})",
        )
        return None

    async def _run(self, request: LoginRequest) -> None:
        me = self.worker_id
        started = anyio.current_time()
        account = await self._account(request)
        if account is None:
            return
        platform = self.platforms.get(account.platform)
        if account.worker_id != me or platform is None:
            self._failed(request, "error", f"account {account.id} is not run by worker {me}")
            return
        log.info(
            "login %s for %s: opening the %s login page",
            request.session_id,
            account.id,
            account.platform,
        )
        try:
            # the request's timeout covers the whole login, the account's read included
            with anyio.fail_after(max(started + request.timeout_s - anyio.current_time(), 0)):
                result = await platform.login(account, _Reporter(self, request))
        except TimeoutError:
            self._failed(request, "timeout", f"no login within {request.timeout_s:g}s")
            return
        except LoginFailedError as exc:
            self._failed(request, exc.reason, str(exc))
            return
        except PlatformError as exc:
            self._failed(request, "error", str(exc))
            return
        except Exception as exc:
            log.exception("login %s for %s crashed", request.session_id, account.id)
            self._failed(request, "error", f"{type(exc).__name__}: {exc}")
            return
        log.info(
            "login %s for %s: logged in as %s",
            request.session_id,
            account.id,
            result.platform_user_id,
        )
        try:
            success = LoginSuccess(
                sender=me,
                account_id=account.id,
                worker_id=me,
                platform_user_id=result.platform_user_id,
                user_info=result.user_info,
                session_id=request.session_id,
            )
        except ValidationError as exc:
            self._failed(request, "error", f"the platform's profile is not usable: {exc}")
            return
        self.outbox.send("events", success)

    def _failed(self, request: LoginRequest, reason: FailReason, error: str) -> None:
        log.warning(
            "login %s for %s failed (%s): %s", request.session_id, request.account_id, reason, error
        )
        self.outbox.send(
            "events",
            LoginFailed(
                sender=self.worker_id,
                session_id=request.session_id,
                account_id=request.account_id,
                worker_id=self.worker_id,
                reason=reason,
                error=clip(error),
            ),
        )
