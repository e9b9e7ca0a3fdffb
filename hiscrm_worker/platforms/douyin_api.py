"""Everything douyin-specific that changes when the site changes: addresses, selectors,
login markers, and the parsers of the JSON the logged-in pages receive.

Shapes follow the creator centre's responses (see DESIGN.md §6); tests/worker holds
payload fixtures of the real shape, including malformed and empty ones.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from hiscrm_bus.messages import CrawledItem

from .base import PlatformError

HOME_URL = "https://www.douyin.com/"
CREATOR_COMMENTS_URL = "https://creator.douyin.com/creator-micro/interactive/comment"
CREATOR_MESSAGES_URL = "https://creator.douyin.com/creator-micro/data/following/chat"
PROFILE_SELF_PATH = "/aweme/v1/web/user/profile/self/"
COMMENT_LIST_PATH = "/aweme/v1/creator/comment/list/"
# the creator chat page's message pull; the least certain address here
MESSAGE_LIST_PATH = "/aweme/v1/creator/im/message/list/"

LOGIN_BUTTON = "[data-e2e='login-button'], #login-pannel, text=登录"
QR_IMAGE = (
    "[data-e2e='qrcode-image'] img, .web-login-scan-code__content img, img[aria-label='二维码']"
)
QR_EXPIRED = "text=二维码已失效, text=二维码已过期"
QR_SCANNED = "text=扫码成功"
LOGIN_COOKIE = "LOGIN_STATUS"
LOGIN_STORAGE_KEY = "HasUserLogin"


def _check_status(doc: Any, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise PlatformError(f"douyin {what}: response is not a JSON object")
    code = doc.get("status_code", 0)
    if code not in (0, "0"):
        msg = doc.get("status_msg") or doc.get("message") or "no message"
        raise PlatformError(f"douyin {what}: status_code {code} ({msg})")
    return doc


def parse_profile(doc: Any) -> tuple[str, dict[str, Any]]:
    """(uid, user_info) from ``/aweme/v1/web/user/profile/self/``. ``uid`` and
    ``sec_uid`` never change; the 抖音号 ``unique_id`` can, so it is not the id."""
    user = _check_status(doc, "profile").get("user")
    if not isinstance(user, dict) or not str(user.get("uid") or "").strip():
        raise PlatformError("douyin profile: no user.uid in the response")
    info = {k: user[k] for k in ("sec_uid", "nickname", "unique_id", "avatar_thumb") if k in user}
    return str(user["uid"]), info


def _epoch(value: Any, what: str) -> datetime:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise PlatformError(f"douyin {what}: bad time {value!r}") from None
    if seconds > 1e12:  # milliseconds
        seconds /= 1000
    return datetime.fromtimestamp(seconds, UTC)


def parse_comment_list(doc: Any) -> list[CrawledItem]:
    """Comments from ``/aweme/v1/creator/comment/list/``."""
    body = _check_status(doc, "comment list")
    raw = body.get("comments") or body.get("comment_info_list") or []
    if not isinstance(raw, list):
        raise PlatformError("douyin comment list: 'comments' is not a list")
    items = []
    for c in raw:
        if not isinstance(c, dict) or not c.get("comment_id"):
            raise PlatformError("douyin comment list: a comment has no comment_id")
        user = c.get("user_info") or {}
        items.append(
            CrawledItem(
                kind="comment",
                item_id=str(c["comment_id"]),
                text=str(c.get("text", "")),
                author=str(user.get("screen_name", "")),
                created_at=_epoch(c.get("create_time"), "comment list"),
                extra={
                    "user_id": str(user.get("user_id", "")),
                    "digg_count": int(c.get("digg_count") or 0),
                    "reply_count": int(c.get("reply_count") or 0),
                    "level": c.get("level"),
                    "is_author": bool(c.get("is_author")),
                    "reply_to": (c.get("reply_to_user_info") or {}).get("screen_name"),
                },
            )
        )
    return items


def parse_message_list(doc: Any) -> list[CrawledItem]:
    """Direct messages from the creator chat page's message pull."""
    body = _check_status(doc, "message list")
    raw = body.get("messages") or []
    if not isinstance(raw, list):
        raise PlatformError("douyin message list: 'messages' is not a list")
    items = []
    for m in raw:
        if not isinstance(m, dict) or not m.get("server_message_id"):
            raise PlatformError("douyin message list: a message has no server_message_id")
        content = m.get("content", "")
        if isinstance(content, str) and content.startswith("{"):
            with contextlib.suppress(ValueError, AttributeError):
                content = json.loads(content).get("text", content)
        items.append(
            CrawledItem(
                kind="dm",
                item_id=str(m["server_message_id"]),
                text=str(content),
                author=str(m.get("sender_nickname") or m.get("sender", "")),
                created_at=_epoch(m.get("create_time"), "message list"),
                extra={"conversation_id": str(m.get("conversation_id", ""))},
            )
        )
    return items
