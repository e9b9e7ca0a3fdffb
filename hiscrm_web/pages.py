"""Sign-in and the fleet page."""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from hiscrm_bus.accounts import PLATFORMS
from hiscrm_bus.pending import Outcome
from hiscrm_master.diagnosis import Diagnosis, diagnose
from hiscrm_master.snapshot import collect

from . import accounts, actions, events, logins
from .app import COOKIE, console, route, session_of, set_session_cookie
from .bodies import read_form
from .chart import latency_chart

# the newest outcomes the latency chart is drawn from (its applied ones): as many as
# collect() reads for the fleet page
CHART_OUTCOMES = 1000


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# the sign-in form's own CSRF token (double submit: a cookie only this site can set, and
# the same value in the form), so another site cannot sign an operator in as someone else
SIGNIN_COOKIE = "hiscrm_signin"


def _signin_form(request: Request, status: int = 200, **values: Any) -> Response:
    token = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(32)
    values.setdefault("error", None)
    values.setdefault("user", "")
    response = console(request).render(request, "signin.html", status, signin_csrf=token, **values)
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=console(request).settings.web_secure_cookies,
        path="/signin",
    )
    return response


async def signin_page(request: Request) -> Response:
    return _signin_form(request)


async def signin(request: Request) -> Response:
    c = console(request)
    expired = "the sign-in form expired or came from elsewhere: try again"
    # what costs nothing is checked before the form is read (anyone may post here)
    kept = request.cookies.get(SIGNIN_COOKIE) or ""
    if not kept:
        return _signin_form(request, 403, error=expired)
    who = client_address(request)
    s = c.settings
    if await c.users.too_many_attempts(who, s.web_max_attempts):
        message = f"too many failed sign-ins: wait up to {s.web_attempts_window_s} s"
        return _signin_form(request, 429, error=message)
    form = await read_form(request)
    user, password = str(form.get("user") or ""), str(form.get("password") or "")
    sent = str(form.get("signin_csrf") or "")
    if not hmac.compare_digest(sent.encode(), kept.encode()):
        return _signin_form(request, 403, error=expired)
    generation = await c.users.authenticate(user, password)
    if generation is None:
        await c.users.failed(who, s.web_attempts_window_s)
        return _signin_form(request, 401, error="wrong user or password", user=user)
    token, _session = await c.users.start(user, generation)
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(response, token, s)
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


async def signout(request: Request) -> Response:
    await console(request).users.end(session_of(request))
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def fleet_view(request: Request) -> tuple[Diagnosis, dict[str, str], list[Outcome]]:
    """The fleet as ``hiscrm diagnose`` sees it, the filters asked for, and the
    newest outcomes of its updates (newest first)."""
    c = console(request)
    snap = await collect(c.redis, c.settings, archive=c.archive)
    result = diagnose(snap)
    filters = {k: str(request.query_params.get(k) or "") for k in ("q", "platform", "worker")}
    return result, filters, snap.outcomes


def matches(account: Any, filters: dict[str, str]) -> bool:
    q = filters["q"].lower()
    if q and q not in account.id.lower() and q not in (account.platform_user_id or "").lower():
        return False
    if filters["platform"] and account.platform != filters["platform"]:
        return False
    return not filters["worker"] or account.worker == filters["worker"]


async def fleet(request: Request) -> Response:
    if request.headers.get("HX-Request"):
        return await render_fleet(request, rows_only=True)
    return await render_fleet(request)


async def render_fleet(
    request: Request, *, action: Any = None, status: int = 200, rows_only: bool = False
) -> Response:
    """The fleet page (``rows_only``: its rows, for htmx), with a fleet action's
    result in ``#action-result``."""
    c = console(request)
    result, filters, outcomes = await fleet_view(request)
    shown = [a for a in result.accounts if matches(a, filters)]
    values: dict[str, Any] = {
        "result": result,
        "accounts": shown,
        "filters": filters,
        "platforms": sorted({a.platform for a in result.accounts if a.platform}),
    }
    if rows_only:
        return c.render(request, "_fleet_rows.html", status, **values)
    return c.render(
        request,
        "fleet.html",
        status,
        **values,
        action=action,
        all_platforms=PLATFORMS,
        chart=latency_chart(outcomes),
    )


async def latency_part(request: Request) -> Response:
    """The latency chart alone (the fleet page refreshes it)."""
    c = console(request)
    outcomes = await c.updates.tracker.recent_outcomes(CHART_OUTCOMES)
    return c.render(request, "_latency.html", chart=latency_chart(outcomes))


def routes() -> list[BaseRoute]:
    return [
        route("/signin", signin_page),
        route("/signin", signin, ["POST"]),
        route("/signout", signout, ["POST"]),
        route("/", fleet),
        route("/events/fleet", events.fleet_events),
        route("/fleet/latency", latency_part),
        route("/accounts", actions.add_account, ["POST"]),
        route("/accounts/import", actions.import_accounts, ["POST"]),
        route("/fleet/set", actions.fleet_change, ["POST"]),
        route("/accounts/{account_id}", accounts.account_page),
        route("/accounts/{account_id}/status", accounts.account_status),
        route("/accounts/{account_id}/items", accounts.account_items),
        route("/accounts/{account_id}/events", accounts.account_events),
        route("/accounts/{account_id}/config", accounts.edit_config, ["POST"]),
        route("/accounts/{account_id}/enable", accounts.enable, ["POST"]),
        route("/accounts/{account_id}/disable", accounts.disable, ["POST"]),
        route("/accounts/{account_id}/move", accounts.move, ["POST"]),
        route("/accounts/{account_id}/remove", accounts.remove, ["POST"]),
        route("/accounts/{account_id}/login", logins.login_start, ["POST"]),
        route("/accounts/{account_id}/login/{session_id}/events", logins.login_events),
        route("/modal/close", logins.modal_close),
    ]
