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

from . import creator, creator_pages, pages
from .state import PAGE_SIZE, SiteState

log = logging.getLogger(__name__)
COOKIE = "sandbox_session"
MAX_LIMIT = 1000  # items per list response
MAX_BURST = 100_000  # items per bulk post
COMMENT_PAGE = "/creator-micro/interactive/comment"
CHAT_PAGE = "/creator-micro/data/following/chat"
_COMMENT_PATHS = {g: p["comments"] for g, p in creator.PATHS.items()}
_REPLY_PATHS = {g: p["replies"] for g, p in creator.PATHS.items()}


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
        elif path == COMMENT_PAGE:
            self._html(creator_pages.comment_page(state.generation))
        elif path == CHAT_PAGE:
            self._html(creator_pages.chat_page())
        elif path in (
            creator.WORKS_PATH,
            creator.CONTACTS_PATH,
            *_COMMENT_PATHS.values(),
            *_REPLY_PATHS.values(),
        ):
            self._creator_api(path, query)
        elif path == creator.HISTORY_PATH:
            self._history(query)
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

    def _creator_api(self, path: str, query: dict[str, list[str]]) -> None:
        """The creator centre's JSON API: a session that is not logged in gets
        douyin's answer, status_code 8 in an HTTP 200."""
        state = self.server.state
        user = self._user()
        if user is None:
            self._json(200, creator.NOT_LOGGED_IN)
            return
        uid = user["uid"]
        cursor = _int_arg(query, "cursor", 0, 0, 10**9)
        count = _int_arg(query, "count", 10, 1, MAX_LIMIT)
        if cursor is None or count is None:
            self._json(200, {"status_code": 2, "status_msg": "bad cursor or count"})
            return
        if path == creator.WORKS_PATH:
            self._json(200, creator.work_list(state, uid, cursor, count))
        elif path == creator.CONTACTS_PATH:
            self._json(200, creator.contacts(state, uid))
        elif path not in (_COMMENT_PATHS[state.generation], _REPLY_PATHS[state.generation]):
            self._json(404, {"status_code": 404, "status_msg": "not served by this generation"})
        elif path in _COMMENT_PATHS.values():
            work = (query.get(creator.PATHS[state.generation]["work_param"]) or [""])[0]
            self._json(200, creator.comment_list(state, uid, work, cursor, count))
        else:
            parent = (query.get("comment_id") or [""])[0]
            body = creator.reply_list(state, uid, parent, cursor, count)
            if body is None:
                self._json(200, {"status_code": 5, "status_msg": "评论不存在"})
            else:
                self._json(200, body)

    def _history(self, query: dict[str, list[str]]) -> None:
        user = self._user()
        if user is None:
            self._json(401, creator.NOT_LOGGED_IN)
            return
        fan = (query.get("to_user_id") or [""])[0]
        cursor = _int_arg(query, "cursor", 0, 0, 10**9)
        count = _int_arg(query, "count", 20, 1, MAX_LIMIT)
        if not fan or cursor is None or count is None:
            self._json(400, {"status_code": 2, "status_msg": "bad to_user_id, cursor or count"})
            return
        body = creator.history(self.server.state, user["uid"], fan, cursor, count)
        self._send(200, body, "application/octet-stream")

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
            self._post_items(path.rsplit("/", 1)[1], body)
        elif path == "/api/works":
            user_id = str(body.get("user_id") or "").strip()
            title = str(body.get("title") or "").strip()
            if not user_id or not title:
                self._json(400, {"error": "user_id and title are required"})
                return
            self._json(201, state.add_work(user_id, title))
        elif path == "/api/drift":
            self._drift(body)
        else:
            self._json(404, {"error": "not found"})

    def _post_items(self, kind: str, body: dict[str, Any]) -> None:
        """``POST /api/comments`` / ``/api/dms``: one item, or a burst of ``count``
        ("TEXT 1" … "TEXT n"); a comment on ``work_id`` (default: the user's first work)
        or a reply to ``reply_to``."""
        user_id = str(body.get("user_id") or "").strip()
        text = str(body.get("text") or "")
        if not user_id or not text:
            self._json(400, {"error": "user_id and text are required"})
            return
        author = str(body.get("author") or "fan")
        where = {
            k: str(body[k]) for k in ("work_id", "reply_to") if body.get(k) and kind == "comments"
        }
        count = body.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_BURST:
            self._json(400, {"error": f"count must be an integer from 1 to {MAX_BURST}"})
            return
        texts = [text] if "count" not in body else [f"{text} {i}" for i in range(1, count + 1)]
        try:
            items = self.server.state.add_items(kind, user_id, texts, author, **where)
        except KeyError as exc:
            self._json(404, {"error": f"no work or comment {exc.args[0]} of user {user_id}"})
            return
        if "count" not in body:
            self._json(201, items[0])
        else:
            self._json(201, {"count": len(items), "first": items[0]["id"], "last": items[-1]["id"]})

    def _drift(self, body: dict[str, Any]) -> None:
        """``POST /api/drift``: ``{"what": works|comments|replies|contacts, "mode":
        shape|error|off}`` changes what the creator API answers; ``{"generation":
        creator|web}`` which comment API the pages use."""
        state = self.server.state
        generation = body.get("generation")
        if generation is not None:
            if generation not in creator.PATHS:
                self._json(400, {"error": "generation must be creator or web"})
                return
            state.generation = generation
            self._json(200, {"generation": generation})
            return
        what, mode = body.get("what"), body.get("mode")
        if what not in creator.DRIFTABLE or mode not in ("shape", "error", "off"):
            self._json(
                400,
                {
                    "error": f"what must be one of {', '.join(creator.DRIFTABLE)}; "
                    "mode shape, error or off"
                },
            )
            return
        with state.lock:
            if mode == "off":
                state.drift.pop(what, None)
            else:
                state.drift[what] = mode
        self._json(200, {"what": what, "mode": mode})


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
