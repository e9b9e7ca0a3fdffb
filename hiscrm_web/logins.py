"""The QR login modal.

"Log in" (POST /accounts/{id}/login) starts a login through the account's worker, as
``hiscrm login`` does, and answers with the modal; the modal follows the login by
server-sent events (GET /accounts/{id}/login/{session}/events): the QR code (replaced
when it refreshes), the scan, who logged in, then how the config update that hands the
worker its platform_user_id ended, or why the login failed and what to do. The stream
replays the login from its start (a reconnect shows the same), ends with the login (a
``done`` event the modal closes its connection on), stops when the client goes, and
never outlives the login's timeout by more than END_MARGIN_S + APPLY_WAIT_S.

Everything shown is escaped: the nickname and errors come from the platform."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from urllib.parse import quote

import anyio
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from hiscrm_bus.errors import InvalidAccountConfig
from hiscrm_bus.messages import LoginFailed, LoginProgress, LoginQrCode, LoginSuccess
from hiscrm_bus.pending import Outcome
from hiscrm_master.login import (
    END_MARGIN_S,
    LoginStarted,
    LoginUnavailable,
    follow_login,
    login_session,
    start_login,
    wait_login_applied,
)

from .app import SENDER, Console, console
from .events import sse

LOGIN_TIMEOUT_S = 120.0  # as ``hiscrm login``'s default --timeout
# an account just added may not be placed yet: the Master's next pass places it
PLACEMENT_WAIT_S = 2.0
# how often an unanswered request is re-sent and the worker's heartbeat looked at
WATCH_S = 5.0
# a 1×1 transparent GIF: the QR code's place until it comes
PLACEHOLDER = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="

UNAVAILABLE_TODO = {
    "unknown_account": "Add the account on the fleet page first.",
    "no_worker": "Start a Master (hiscrm master) to place it on a worker, or move it to one.",
    "worker_offline": "Start the worker (hiscrm worker --id {worker}), then press Log in again.",
}
FAILED_TODO = {
    "expired": "The QR code expired: press Log in again and scan the new one.",
    "timeout": "No scan in time: press Log in again.",
    "busy": "Another login of this account is running: finish it or wait for it to end.",
    "unsupported": "This platform cannot log in with a QR code.",
    "error": "See the worker's log, then press Log in again.",
}


def _events_url(started: LoginStarted) -> str:
    r = started.request
    return f"/accounts/{quote(r.account_id, safe='')}/login/{quote(r.session_id, safe='')}/events"


async def login_start(request: Request) -> Response:
    c = console(request)
    account_id = request.path_params["account_id"]
    try:
        started = await start_login(
            c.redis,
            c.settings,
            account_id,
            LOGIN_TIMEOUT_S,
            SENDER,
            placement_wait_s=PLACEMENT_WAIT_S,
        )
    except LoginUnavailable as exc:
        # 200: htmx swaps only successful answers into the page, and the modal says why
        todo = UNAVAILABLE_TODO[exc.reason].format(worker=exc.worker_id)
        return _unavailable(c, request, account_id, str(exc), todo)
    except InvalidAccountConfig as exc:
        todo = "Correct the account's config (hiscrm diagnose says what is wrong)."
        return _unavailable(c, request, account_id, str(exc), todo)
    return c.render(
        request,
        "_login_modal.html",
        account_id=account_id,
        events_url=_events_url(started),
        worker_id=started.worker_id,
        placeholder=PLACEHOLDER,
        problem=None,
    )


def _unavailable(c: Console, request: Request, account_id: str, why: str, todo: str) -> Response:
    return c.render(request, "_login_modal.html", account_id=account_id, problem=why, todo=todo)


async def modal_close(request: Request) -> Response:
    """An empty modal (the close button swaps it in; its event stream closes with it)."""
    return Response("", media_type="text/html")


async def login_events(request: Request) -> Response:
    c = console(request)
    account_id = request.path_params["account_id"]
    started = await login_session(c.redis, c.settings, request.path_params["session_id"])
    if started is None or started.request.account_id != account_id:
        return PlainTextResponse(f"no such login of account {account_id}", 404)
    return StreamingResponse(
        _login_stream(c, started),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _login_stream(c: Console, started: LoginStarted) -> AsyncIterator[bytes]:
    """The login's events as SSE, its end, then (after a success) the update's outcome.
    No cancel scope spans a ``yield``: the deadline bounds each wait for an event."""
    ends_at = anyio.current_time() + started.request.timeout_s + END_MARGIN_S
    end: LoginSuccess | LoginFailed | None = None
    gone: LoginUnavailable | None = None
    async with aclosing(
        follow_login(c.redis, c.settings, started, resend_s=WATCH_S, watch_worker=True)
    ) as events:
        while end is None:
            message = None
            with anyio.move_on_after(ends_at - anyio.current_time()):
                try:
                    message = await anext(events)
                except StopAsyncIteration:
                    pass
                except LoginUnavailable as exc:
                    gone = exc
            if message is None:
                break
            if isinstance(message, LoginQrCode):
                yield sse("qr", _qr(message))
                yield sse("status", "scan the QR code with the app")
            elif isinstance(message, LoginProgress):
                yield sse("status", _progress(message))
            else:
                end = message
    if isinstance(end, LoginSuccess) and not end.platform_user_id.strip():
        # the Master refuses it whole: nothing would be applied
        todo = "The platform did not say who logged in: press Log in again."
        yield sse("failed", _failed("no platform user id", "", todo))
    elif isinstance(end, LoginSuccess):
        yield sse("status", _logged_in(end))
        yield sse("applied", "waiting for the worker to apply it…")
        outcome = await wait_login_applied(c.redis, c.settings, started)
        yield sse("applied", _applied(outcome))
    elif isinstance(end, LoginFailed):
        yield sse("failed", _failed(end.reason, end.error, FAILED_TODO[end.reason]))
    elif gone is not None:
        todo = UNAVAILABLE_TODO["worker_offline"].format(worker=started.worker_id)
        yield sse("failed", _failed("worker offline", str(gone), todo))
    else:
        todo = f"Is worker {started.worker_id} running? Start it, then press Log in again."
        waited = f"{started.request.timeout_s + END_MARGIN_S:g}"
        yield sse("failed", _failed("timed out", f"the worker reported no end in {waited} s", todo))
    yield sse("done")


def _qr(message: LoginQrCode) -> str:
    image = Markup('<img class="qr" src="data:image/png;base64,{}" alt="QR code to scan">')
    html = image.format(message.png_b64)
    if message.refresh:
        html += Markup('<p class="qr-note">QR refreshed ({})</p>').format(message.refresh)
    return str(html)


def _progress(message: LoginProgress) -> str:
    if message.status == "scanned":
        return "scanned: confirm on your phone"
    return "the worker opened the login page…"


def _logged_in(success: LoginSuccess) -> str:
    nickname = success.user_info.get("nickname")
    who = f"platform_user_id {success.platform_user_id.strip()}"
    if isinstance(nickname, str) and nickname.strip():
        return str(escape(f"logged in as {nickname.strip()} ({who})"))
    return str(escape(f"logged in ({who})"))


def _applied(outcome: Outcome | None) -> str:
    if outcome is None:
        line = "timed out waiting for the worker to apply it: see the account's outcomes"
        return str(Markup('<span class="error">{}</span>').format(line))
    if outcome.status == "applied":
        return str(
            Markup(
                'platform_user_id applied in {} ms without a restart <small class="detail">'
                "(version {} by worker {})</small>"
            ).format(f"{outcome.latency_ms:.0f}", outcome.version, outcome.worker_id)
        )
    reason = outcome.error or "no reason given"
    return str(
        Markup('<span class="error">{}: {} (worker {})</span>').format(
            outcome.status, reason, outcome.worker_id or "?"
        )
    )


def _failed(reason: str, error: str, todo: str) -> str:
    line = f"login failed: {reason}" + (f" ({error})" if error else "")
    return str(
        Markup('<span class="error">{}</span> <span class="todo">{}</span>').format(line, todo)
    )
