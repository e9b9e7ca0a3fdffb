"""Request bodies: how large each route's may be, and its form parsed within bounds.

``BodyLimit`` answers 413 before the application reads anything when Content-Length is
over the route's limit, and counts the bytes of a body sent without one (chunked),
stopping at the limit, so no request makes the console hold more than its route allows
(the public sign-in form least of all). The forms are then parsed with few fields of
small size (Starlette's defaults allow 1,000 fields of 1 MiB)."""

from __future__ import annotations

import logging
from typing import Final

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

# the largest import file taken (the CLI reads any size from a path)
MAX_UPLOAD_BYTES: Final = 16 * 1024 * 1024
# the sign-in form: a name, a password and its token
SIGNIN_BODY_BYTES: Final = 16 * 1024
# any other form (an account's config is the largest)
FORM_BODY_BYTES: Final = 64 * 1024
# the import form: its file and a few fields
IMPORT_BODY_BYTES: Final = MAX_UPLOAD_BYTES + 64 * 1024
IMPORT_PATH: Final = "/accounts/import"
SIGNIN_PATH: Final = "/signin"

# fields of a form, and the size of one (a file's part is bounded by the body's limit)
FORM_FIELDS: Final = 64
SIGNIN_FIELDS: Final = 8
FIELD_BYTES: Final = 16 * 1024


def body_limit(path: str) -> int:
    """The largest body a request to ``path`` may send."""
    if path == SIGNIN_PATH:
        return SIGNIN_BODY_BYTES
    if path == IMPORT_PATH:
        return IMPORT_BODY_BYTES
    return FORM_BODY_BYTES


def too_large(limit: int) -> PlainTextResponse:
    kib = limit // 1024
    size = f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"
    return PlainTextResponse(f"the request is larger than this form takes ({size})", 413)


class BodyTooLarge(Exception):
    """A body sent without Content-Length went past its route's limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


class BodyLimit:
    """ASGI middleware: 413 for a body over its route's limit, read no further."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = body_limit(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            log.info("console: %s %s refused: %d bytes declared", scope["method"], path, declared)
            await too_large(limit)(scope, receive, send)
            return
        received = 0
        over = started = False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLarge(limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            # BodyTooLarge as it comes out, in whatever task group's ExceptionGroup
            # wrapped it on the way (BaseHTTPMiddleware reads the body in one)
            if not over or started:
                raise
        if over and not started:
            log.info("console: %s %s refused: body over %d bytes", scope["method"], path, limit)
            await too_large(limit)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_form(request: Request, *, files: int = 0) -> FormData:
    """The request's form with few, small fields (and at most ``files`` uploads); an
    over-limit form is Starlette's HTTPException (400) with a sentence."""
    fields = SIGNIN_FIELDS if request.url.path == SIGNIN_PATH else FORM_FIELDS
    return await request.form(max_files=files, max_fields=fields, max_part_size=FIELD_BYTES)
