"""The sandbox site's state: users, QR logins, browser sessions, comments and DMs.

Comment and DM lists are served like the creator centre's: newest first, one page per
response, with ``cursor`` (the offset of the next page), ``has_more`` and
``total_count``. An offset cursor shifts when items arrive between two pages, as the
real site's does; the page after a shift repeats items, it never skips one.
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

QrStatus = Literal["pending", "scanned", "confirmed", "expired"]
PAGE_SIZE = 50  # items per response unless the caller asks for another ``limit``


@dataclass
class QrLogin:
    token: str
    created: float
    expires_at: float
    refresh: int
    status: QrStatus = "pending"
    user_id: str | None = None
    session_id: str | None = None


@dataclass
class SiteState:
    qr_ttl_s: float = 60.0
    max_refresh: int = 3
    logins: dict[str, QrLogin] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    items: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_qr(self, previous: str | None = None) -> QrLogin | None:
        """A fresh QR login; a refresh of ``previous`` counts against ``max_refresh``."""
        with self.lock:
            refresh = 0
            if previous is not None and previous in self.logins:
                refresh = self.logins[previous].refresh + 1
                if refresh > self.max_refresh:
                    return None
            now = time.time()
            login = QrLogin(secrets.token_urlsafe(12), now, now + self.qr_ttl_s, refresh)
            self.logins[login.token] = login
            return login

    def qr_status(self, token: str) -> QrLogin | None:
        with self.lock:
            login = self.logins.get(token)
            if login and login.status in ("pending", "scanned") and time.time() > login.expires_at:
                login.status = "expired"
            return login

    def scan(self, user_id: str, nickname: str, token: str | None, confirm: bool) -> QrLogin | None:
        """What a phone does: scan the newest pending code (or ``token``), then confirm."""
        with self.lock:
            now = time.time()
            pending = [
                lg
                for lg in self.logins.values()
                if lg.status in ("pending", "scanned")
                and now <= lg.expires_at
                and (token is None or lg.token == token)
            ]
            if not pending:
                return None
            login = max(pending, key=lambda lg: lg.created)
            login.user_id = user_id
            login.status = "scanned"
            self.users.setdefault(
                user_id,
                {
                    "uid": user_id,
                    "sec_uid": f"MS4wLjABAAAA{user_id}",
                    "nickname": nickname or f"user{user_id}",
                    "unique_id": f"dy{user_id}",
                },
            )
            if confirm:
                login.status = "confirmed"
                login.session_id = secrets.token_urlsafe(16)
                self.sessions[login.session_id] = user_id
            return login

    def expire_sessions(self, user_id: str) -> int:
        """End every browser session of the user (as a platform does when a login
        expires); returns how many there were."""
        with self.lock:
            gone = [sid for sid, uid in self.sessions.items() if uid == user_id]
            for sid in gone:
                del self.sessions[sid]
            return len(gone)

    def user_of(self, session_id: str | None) -> dict[str, Any] | None:
        with self.lock:
            uid = self.sessions.get(session_id or "")
            return self.users.get(uid) if uid else None

    def add_item(self, kind: str, user_id: str, text: str, author: str) -> dict[str, Any]:
        return self.add_items(kind, user_id, [text], author)[0]

    def add_items(
        self, kind: str, user_id: str, texts: list[str], author: str
    ) -> list[dict[str, Any]]:
        """Post several items at once (a burst): one lock, so a reader sees all or none."""
        with self.lock:
            now = int(time.time())
            added = []
            for text in texts:
                n = next(self._ids)
                added.append(
                    {
                        "id": f"{kind[0]}{n}",
                        "text": text,
                        "author": author,
                        "create_time": now,
                        "seq": n,
                    }
                )
            self.items.setdefault((kind, user_id), []).extend(added)
            return added

    def list_items(self, kind: str, user_id: str, limit: int = PAGE_SIZE) -> list[dict[str, Any]]:
        """The newest ``limit`` items, newest first."""
        return self.page(kind, user_id, 0, limit)["items"]  # type: ignore[no-any-return]

    def page(self, kind: str, user_id: str, cursor: int, limit: int = PAGE_SIZE) -> dict[str, Any]:
        """The page at offset ``cursor`` of the newest-first list: ``items``, ``cursor``
        (the next page's offset), ``has_more`` and ``total_count``."""
        with self.lock:
            kept = self.items.get((kind, user_id), [])
            total = len(kept)
            end = max(0, total - cursor)
            items = list(reversed(kept[max(0, end - limit) : end]))
            return {
                "items": items,
                "cursor": cursor + len(items),
                "has_more": cursor + len(items) < total,
                "total_count": total,
            }
