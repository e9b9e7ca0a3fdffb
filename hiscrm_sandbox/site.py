"""The sandbox site's HTTP server (stdlib ``http.server``, loopback by default)."""

from __future__ import annotations

import io
import json
import logging
import re
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import qrcode
from qrcode.image.pure import PyPNGImage

from . import pages
from .state import PAGE_SIZE, SiteState

log = logging.getLogger(__name__)
COOKIE = "sandbox_session"
MAX_LIMIT = 1000  # items per list response
MAX_BURST = 100_000  # items per bulk post


def _int_arg(query: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int | None:
    """A query argument as an int in [lo, hi]; None when it is not one."""
    raw = (query.get(name) or [str(default)])[0]
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if lo <= value <= hi else None


def list_response(
    state: SiteState, kind: str, user_id: str, cursor: int = 0, limit: int = PAGE_SIZE
) -> dict[str, Any]:
    """The body of ``GET /api/comments`` or ``/api/dms``: the page at ``cursor`` of the
    newest-first list, shaped like the creator centre's (``cursor`` / ``has_more`` /
    ``total_count``); without a cursor, the newest ``limit`` items as always."""
    page = state.page(kind, user_id, cursor, limit)
    return {
        "status_code": 0,
        kind: page["items"],
        "cursor": page["cursor"],
        "has_more": page["has_more"],
        "total_count": page["total_count"],
    }


def qr_png(data: str) -> bytes:
    out = io.BytesIO()
    qrcode.make(data, image_factory=PyPNGImage, box_size=6, border=2).save(out)
    return out.getvalue()


class Handler(BaseHTTPRequestHandler):
    server: SandboxServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # plumbing

    def _send(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json", headers)

    def _html(self, body: str) -> None:
        self._send(200, body.encode(), "text/html; charset=utf-8")

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        try:
            doc = json.loads(self.rfile.read(length))
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _user(self) -> dict[str, Any] | None:
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        morsel = cookie.get(COOKIE)
        return self.server.state.user_of(morsel.value if morsel else None)

    # routes

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        state = self.server.state
        if path in ("/", "/login"):
            self._html(pages.LOGIN)
        elif m := re.fullmatch(r"/api/qr/([\w-]+)\.png", path):
            self._send(200, qr_png(f"{self.server.base_url}/scan?token={m[1]}"), "image/png")
        elif m := re.fullmatch(r"/api/qr/([\w-]+)/status", path):
            login = state.qr_status(m[1])
            if login is None:
                self._json(404, {"error": "unknown code"})
                return
            headers = {}
            if login.status == "confirmed" and login.session_id:
                headers["Set-Cookie"] = f"{COOKIE}={login.session_id}; Path=/; HttpOnly"
            self._json(200, {"status": login.status, "refresh": login.refresh}, headers)
        elif path == "/api/profile/self":
            user = self._user()
            if user is None:
                self._json(401, {"status_code": 8, "status_msg": "not logged in"})
            else:
                self._json(200, {"status_code": 0, "user": user})
        elif path in pages.PAGES:
            # like a single-page app: the page loads for anyone, its API calls decide
            self._html(pages.PAGES[path])
        elif path in ("/api/comments", "/api/dms"):
            user = self._user()
            if user is None:
                self._json(401, {"status_code": 8, "status_msg": "not logged in"})
                return
            kind = path.rsplit("/", 1)[1]
            cursor = _int_arg(query, "cursor", 0, 0, 10**9)
            limit = _int_arg(query, "limit", PAGE_SIZE, 1, MAX_LIMIT)
            if cursor is None or limit is None:
                self._json(400, {"status_code": 2, "status_msg": "bad cursor or limit"})
                return
            self._json(200, list_response(state, kind, user["uid"], cursor, limit))
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        state = self.server.state
        body = self._body()
        if path == "/api/qr/new":
            login = state.new_qr(body.get("previous"))
            if login is None:
                self._json(410, {"error": "too many refreshes"})
            else:
                self._json(
                    200,
                    {"token": login.token, "refresh": login.refresh, "expires_in": state.qr_ttl_s},
                )
        elif path == "/api/scan":
            user_id = str(body.get("user_id") or "").strip()
            if not user_id:
                self._json(400, {"error": "user_id is required"})
                return
            login = state.scan(
                user_id,
                str(body.get("nickname") or ""),
                body.get("token"),
                bool(body.get("confirm", True)),
            )
            if login is None:
                self._json(404, {"error": "no login is waiting for a scan"})
            else:
                self._json(200, {"token": login.token, "status": login.status})
        elif path == "/api/sessions/expire":
            user_id = str(body.get("user_id") or "").strip()
            if not user_id:
                self._json(400, {"error": "user_id is required"})
                return
            self._json(200, {"expired": state.expire_sessions(user_id)})
        elif path in ("/api/comments", "/api/dms"):
            user_id = str(body.get("user_id") or "").strip()
            text = str(body.get("text") or "")
            if not user_id or not text:
                self._json(400, {"error": "user_id and text are required"})
                return
            kind = path.rsplit("/", 1)[1]
            author = str(body.get("author") or "fan")
            if "count" not in body:
                self._json(201, state.add_item(kind, user_id, text, author))
                return
            count = body["count"]
            if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_BURST:
                self._json(400, {"error": f"count must be an integer from 1 to {MAX_BURST}"})
                return
            # a burst: "TEXT 1" … "TEXT n", posted at once
            texts = [f"{text} {i}" for i in range(1, count + 1)]
            items = state.add_items(kind, user_id, texts, author)
            self._json(201, {"count": len(items), "first": items[0]["id"], "last": items[-1]["id"]})
        else:
            self._json(404, {"error": "not found"})


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a browser closing a connection mid-response is normal here; log, don't print
        log.debug("connection from %s ended abruptly", client_address, exc_info=True)

    def __init__(self, host: str, port: int, state: SiteState) -> None:
        super().__init__((host, port), Handler)
        self.state = state

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


def serve(host: str, port: int, qr_ttl_s: float, max_refresh: int) -> SandboxServer:
    """A bound server; call ``serve_forever()`` on it."""
    return SandboxServer(host, port, SiteState(qr_ttl_s=qr_ttl_s, max_refresh=max_refresh))
