"""The sandbox site's state: users, QR logins, browser sessions, works, comments with
their replies, and DMs in conversations.

Lists are served like the creator centre's: newest first (a comment's replies oldest
first), one page per response, with ``cursor`` (the offset of the next page),
``has_more`` and a total. An offset cursor shifts when items arrive between two pages,
as the real site's does; the page after a shift repeats items, it never skips one.

Ids are a letter and a number that grows with posting order: ``c`` comments and
replies and ``d`` DMs share one counter, ``w`` works count on their own. A comment
posted without a work goes to the user's first work (made when needed); each author of
comments and DMs is a fan with a uid of their own, and a user's DMs from one fan are
one conversation.
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
DEFAULT_WORK_TITLE = "我的第一个作品"
FAN_UIDS = 3045678901234000  # fans' uids count up from here


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
    works: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    fans: dict[str, str] = field(default_factory=dict)  # author → uid
    # what the creator-centre API serves: its generation, and any drift asked for
    generation: Literal["creator", "web"] = "creator"
    drift: dict[str, Literal["shape", "error"]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _work_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

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

    def add_item(
        self,
        kind: str,
        user_id: str,
        text: str,
        author: str,
        *,
        work_id: str | None = None,
        reply_to: str | None = None,
    ) -> dict[str, Any]:
        return self.add_items(kind, user_id, [text], author, work_id=work_id, reply_to=reply_to)[0]

    def add_items(
        self,
        kind: str,
        user_id: str,
        texts: list[str],
        author: str,
        *,
        work_id: str | None = None,
        reply_to: str | None = None,
    ) -> list[dict[str, Any]]:
        """Post several items at once (a burst): one lock, so a reader sees all or none.
        A comment goes to ``work_id`` (default: the user's first work) or, with
        ``reply_to``, is a reply to that comment (on its work). Raises KeyError for an
        unknown work or comment."""
        with self.lock:
            now = time.time()
            extra: dict[str, Any] = {"author_id": self._fan(author)}
            if kind == "comments":
                parent = self._comment(user_id, reply_to) if reply_to else None
                if parent is not None:
                    work_id = parent["work_id"]
                    extra["parent_id"] = parent["id"]
                    extra["reply_to"] = parent["author"]
                elif work_id is None:
                    work_id = self._works(user_id)[0]["item_id"]
                elif not any(w["item_id"] == work_id for w in self._works(user_id)):
                    raise KeyError(work_id)
                extra["work_id"] = work_id
            added = []
            for text in texts:
                n = next(self._ids)
                added.append(
                    {
                        "id": f"{kind[0]}{n}",
                        "text": text,
                        "author": author,
                        "create_time": int(now),
                        "created_ms": int(now * 1000),
                        "seq": n,
                        **extra,
                    }
                )
            self.items.setdefault((kind, user_id), []).extend(added)
            return added

    def add_work(self, user_id: str, title: str) -> dict[str, Any]:
        with self.lock:
            self._works(user_id)
            return self._new_work(user_id, title)

    def _new_work(self, user_id: str, title: str) -> dict[str, Any]:
        n = next(self._work_ids)
        work = {"item_id": f"w{n}", "title": title, "create_time": int(time.time()), "seq": n}
        self.works.setdefault(user_id, []).append(work)
        return work

    def _works(self, user_id: str) -> list[dict[str, Any]]:
        """The user's works, oldest first (the first made when needed). Under the lock."""
        if not self.works.get(user_id):
            self._new_work(user_id, DEFAULT_WORK_TITLE)
        return self.works[user_id]

    def _comment(self, user_id: str, comment_id: str) -> dict[str, Any]:
        for c in self.items.get(("comments", user_id), []):
            if c["id"] == comment_id:
                return c
        raise KeyError(comment_id)

    def _fan(self, author: str) -> str:
        """The uid of a fan, by name (a new fan gets the next one). Under the lock."""
        if author not in self.fans:
            self.fans[author] = str(FAN_UIDS + len(self.fans) + 1)
        return self.fans[author]

    def fan_name(self, uid: str) -> str | None:
        with self.lock:
            return next((name for name, u in self.fans.items() if u == uid), None)

    # the creator centre's lists: each a newest-first list paged at an offset

    def work_list(self, user_id: str) -> list[dict[str, Any]]:
        """The user's works, newest first, each with its number of comments."""
        with self.lock:
            works = list(reversed(self._works(user_id)))
            comments = self.items.get(("comments", user_id), [])
            counts = {w["item_id"]: 0 for w in works}
            for c in comments:
                if "parent_id" not in c and c.get("work_id") in counts:
                    counts[c["work_id"]] += 1
            return [{**w, "comment_count": counts[w["item_id"]]} for w in works]

    def comment_list(self, user_id: str, work_id: str) -> list[dict[str, Any]]:
        """A work's comments, newest first, each with its number of replies."""
        with self.lock:
            kept = self.items.get(("comments", user_id), [])
            replies: dict[str, int] = {}
            for c in kept:
                if "parent_id" in c:
                    replies[c["parent_id"]] = replies.get(c["parent_id"], 0) + 1
            return [
                {**c, "reply_count": replies.get(c["id"], 0)}
                for c in reversed(kept)
                if c.get("work_id") == work_id and "parent_id" not in c
            ]

    def reply_list(self, user_id: str, comment_id: str) -> list[dict[str, Any]] | None:
        """A comment's replies, oldest first (None: no such comment)."""
        with self.lock:
            kept = self.items.get(("comments", user_id), [])
            if not any(c["id"] == comment_id for c in kept):
                return None
            return [c for c in kept if c.get("parent_id") == comment_id]

    def contacts(self, user_id: str) -> list[str]:
        """The fans the user has DMs from, the latest conversation first."""
        with self.lock:
            latest: dict[str, int] = {}
            for m in self.items.get(("dms", user_id), []):
                latest[m["author_id"]] = m["seq"]
            return sorted(latest, key=lambda uid: -latest[uid])

    def messages(self, user_id: str, fan_uid: str) -> list[dict[str, Any]]:
        """The user's conversation with a fan, oldest first."""
        with self.lock:
            return [m for m in self.items.get(("dms", user_id), []) if m["author_id"] == fan_uid]

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
