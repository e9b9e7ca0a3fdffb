"""Sign-in and the fleet page."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute

from hiscrm_master.diagnosis import Diagnosis, diagnose
from hiscrm_master.snapshot import collect

from . import events
from .app import COOKIE, console, route, session_of, set_session_cookie


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def signin_page(request: Request) -> Response:
    return console(request).render(request, "signin.html", error=None, user="")


async def signin(request: Request) -> Response:
    c = console(request)
    form = await request.form()
    user, password = str(form.get("user") or ""), str(form.get("password") or "")
    who = client_address(request)
    s = c.settings
    if await c.users.too_many_attempts(who, s.web_max_attempts):
        message = f"too many failed sign-ins: wait up to {s.web_attempts_window_s} s"
        return c.render(request, "signin.html", 429, error=message, user=user)
    if not await c.users.check(user, password):
        await c.users.failed(who, s.web_attempts_window_s)
        return c.render(request, "signin.html", 401, error="wrong user or password", user=user)
    token, _session = await c.users.start(user)
    response = RedirectResponse("/", status_code=303)
    set_session_cookie(response, token, s)
    return response


async def signout(request: Request) -> Response:
    await console(request).users.end(session_of(request))
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def fleet_view(request: Request) -> tuple[Diagnosis, dict[str, str]]:
    """The fleet as ``hiscrm diagnose`` sees it, and the filters asked for."""
    c = console(request)
    snap = await collect(c.redis, c.settings, archive=c.archive)
    result = diagnose(snap)
    filters = {k: str(request.query_params.get(k) or "") for k in ("q", "platform", "worker")}
    return result, filters


def matches(account: Any, filters: dict[str, str]) -> bool:
    q = filters["q"].lower()
    if q and q not in account.id.lower() and q not in (account.platform_user_id or "").lower():
        return False
    if filters["platform"] and account.platform != filters["platform"]:
        return False
    return not filters["worker"] or account.worker == filters["worker"]


async def fleet(request: Request) -> Response:
    result, filters = await fleet_view(request)
    accounts = [a for a in result.accounts if matches(a, filters)]
    template = "_fleet_rows.html" if request.headers.get("HX-Request") else "fleet.html"
    return console(request).render(
        request,
        template,
        result=result,
        accounts=accounts,
        filters=filters,
        platforms=sorted({a.platform for a in result.accounts if a.platform}),
    )


def routes() -> list[BaseRoute]:
    return [
        route("/signin", signin_page),
        route("/signin", signin, ["POST"]),
        route("/signout", signout, ["POST"]),
        route("/", fleet),
        route("/events/fleet", events.fleet_events),
    ]
