"""The console's application: routes, sign-in, CSRF, templates and the shared clients.

Every page needs a signed-in session (else: redirect to /signin); every POST needs the
session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``, which htmx sends
from the page's ``hx-headers``), else 403. Templates autoescape everything: what a
platform or a fan wrote is shown as text."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from hiscrm_bus.connection import connect
from hiscrm_master.archive import Archive
from hiscrm_master.updates import Updates

from .auth import Session, Users
from .bodies import IMPORT_PATH, BodyLimit, read_form
from .failures import FAILURES, failure_response
from .settings import WebSettings

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
COOKIE = "hiscrm_session"
SENDER = "web"
HTMX = "htmx-2.0.11.min.js"
HTMX_SSE = "htmx-ext-sse-2.2.4.js"


@dataclass
class Console:
    """What every handler shares."""

    settings: WebSettings
    redis: Redis
    archive: Archive
    users: Users
    updates: Updates
    templates: Environment

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> Response:
        session: Session | None = getattr(request.state, "session", None)
        page = self.templates.get_template(name).render(
            request=request,
            session=session,
            csrf=session.csrf if session else "",
            htmx=HTMX,
            htmx_sse=HTMX_SSE,
            **values,
        )
        return HTMLResponse(page, status_code=status)


def console(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


def session_of(request: Request) -> Session:
    found: Session = request.state.session
    return found


Handler = Callable[[Request], Awaitable[Response]]
PUBLIC = ("/signin", "/static/")


async def guard(request: Request, call_next: Handler) -> Response:
    """Sign-in and CSRF checks around every route but sign-in and static files, and
    the one-sentence answer when Redis or the database fails under a request."""
    try:
        return await _checked(request, call_next)
    except FAILURES as exc:
        return failure_response(request, exc)


async def _checked(request: Request, call_next: Handler) -> Response:
    path = request.url.path
    if any(path.startswith(p) for p in PUBLIC):
        return await call_next(request)
    c = console(request)
    session = await c.users.session(request.cookies.get(COOKIE))
    if session is None:
        if request.headers.get("HX-Request"):
            return Response(status_code=401, headers={"HX-Redirect": "/signin"})
        return RedirectResponse("/signin", status_code=303)
    request.state.session = session
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        sent = request.headers.get("X-CSRF-Token")
        if sent is None:
            # cached (within the route's body limit): the handler reads the form again
            await request.body()
            try:
                form = await read_form(request, files=1 if path == IMPORT_PATH else 0)
            except HTTPException as exc:
                return PlainTextResponse(exc.detail, exc.status_code)
            value = form.get("csrf")
            sent = value if isinstance(value, str) else None
            await form.close()  # an upload's temporary files (the handler has its own)
        if sent is None or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            return PlainTextResponse("the form's CSRF token is missing or wrong", 403)
    response = await call_next(request)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def security_headers(request: Request, call_next: Handler) -> Response:
    response = await call_next(request)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def set_session_cookie(response: Response, token: str, settings: WebSettings) -> None:
    response.set_cookie(
        COOKIE,
        token,
        max_age=min(settings.web_session_ttl_s, settings.web_session_max_age_s),
        httponly=True,
        samesite="strict",
        secure=settings.web_secure_cookies,
        path="/",
    )


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


def create_app(settings: WebSettings, routes: list[BaseRoute] | None = None) -> Starlette:
    """The console for ``settings``; it connects to Redis and the database when it
    starts serving."""
    from . import pages

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        redis = await connect(settings)
        archive = Archive.of(settings, create=False)
        try:
            app.state.console = Console(
                settings=settings,
                redis=redis,
                archive=archive,
                users=Users(
                    redis,
                    settings.keys,
                    ttl_s=settings.web_session_ttl_s,
                    max_age_s=settings.web_session_max_age_s,
                ),
                updates=Updates(redis, settings, SENDER),
                templates=templates(),
            )
            yield
        finally:
            await archive.close()
            await redis.aclose()

    app = Starlette(
        routes=[
            *(routes if routes is not None else pages.routes()),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        lifespan=lifespan,
        middleware=[
            Middleware(BaseHTTPMiddleware, dispatch=security_headers),
            Middleware(BodyLimit),
            Middleware(BaseHTTPMiddleware, dispatch=guard),
        ],
    )
    return app


def route(path: str, endpoint: Handler, methods: list[str] | None = None) -> Route:
    return Route(path, endpoint, methods=methods or ["GET"])
