"""The sandbox's creator centre: the bodies of the responses its pages receive, shaped
like douyin's (the envelopes, field names and field types that
``hiscrm_worker/platforms/douyin_api.py`` describes), in either generation of the
comment API, and drifted on demand (``POST /api/drift``) so a crawler's answer to a
site change can be seen offline.

The chat page's messages are the exception: like douyin's IM service, the history
endpoint answers in a binary body (base64 here, standing in for protobuf) that the
page decodes and keeps in its components' props, where a crawler has to read them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any, Literal

from .state import SiteState

Generation = Literal["creator", "web"]
DRIFTABLE = ("works", "comments", "replies", "contacts")
_LIST_KEYS = {"item_info_list", "comment_info_list", "comments", "user_list"}
ERROR_STATUS = (2053, "服务暂不可用，请稍后再试")
NOT_LOGGED_IN = {"status_code": 8, "status_msg": "用户未登录"}
AVATAR = "https://p3.douyinpic.com/aweme/100x100/sandbox.jpeg"

# the creator centre's addresses, by generation (the pages ask the ones of the site's)
PATHS: dict[Generation, dict[str, str]] = {
    "creator": {
        "comments": "/aweme/v1/creator/comment/list/",
        "replies": "/aweme/v1/creator/comment/reply/list/",
        "work_param": "item_id",
    },
    "web": {
        "comments": "/aweme/v1/web/comment/list/select/",
        "replies": "/aweme/v1/web/comment/list/reply/",
        "work_param": "aweme_id",
    },
}
WORKS_PATH = "/aweme/v1/creator/item/list/"
CONTACTS_PATH = "/aweme/v1/creator/im/user_detail/"
HISTORY_PATH = "/v1/im/message/history"


def _now_ms() -> int:
    return int(time.time() * 1000)


def secret(user_id: str, fan_uid: str) -> str:
    """A fan's id as one account sees it (douyin encrypts user ids per account)."""
    digest = hashlib.sha256(f"{user_id}:{fan_uid}".encode()).hexdigest()[:24]
    return f"MS4wLjABAAAA{digest}"


def _window(rows: list[Any], cursor: int, count: int) -> tuple[list[Any], int, bool, int]:
    page = rows[cursor : cursor + count]
    after = cursor + len(page)
    return page, after, after < len(rows), len(rows)


def _drifted(state: SiteState, what: str, body: dict[str, Any]) -> dict[str, Any]:
    mode = state.drift.get(what)
    if mode == "error":
        code, msg = ERROR_STATUS
        return {"status_code": code, "status_msg": msg, "extra": {"now": _now_ms()}}
    if mode == "shape":  # the list renamed, as a site update would
        return {(f"{k}_v2" if k in _LIST_KEYS else k): v for k, v in body.items()}
    return body


def work_list(state: SiteState, user_id: str, cursor: int, count: int) -> dict[str, Any]:
    page, after, more, total = _window(state.work_list(user_id), cursor, count)
    works = [
        {
            "item_id": w["item_id"],
            "title": w["title"],
            "create_time": w["create_time"],
            "comment_count": w["comment_count"],
            "cover": {"url_list": [AVATAR]},
        }
        for w in page
    ]
    body = {
        "status_code": 0,
        "status_msg": "",
        "item_info_list": works,
        "cursor": after,
        "has_more": more,
        "total_count": total,
        "extra": {"now": _now_ms()},
    }
    return _drifted(state, "works", body)


def _creator_comment(user_id: str, c: dict[str, Any], reply_to: dict[str, Any] | None) -> Any:
    return {
        "comment_id": c["id"],
        "create_time": str(c["create_time"]),
        "text": c["text"],
        "digg_count": "0",
        "reply_count": str(c.get("reply_count", 0)),
        "level": 2 if "parent_id" in c else 1,
        "status": 1,
        "is_author": False,
        "user_info": {
            "user_id": secret(user_id, c["author_id"]),
            "screen_name": c["author"],
            "avatar_url": AVATAR,
        },
        # an object on a top-level comment too, with an empty name
        "reply_to_user_info": reply_to or {"user_id": "", "screen_name": "", "avatar_url": ""},
    }


def _web_comment(user_id: str, c: dict[str, Any]) -> Any:
    return {
        "cid": c["id"],
        "text": c["text"],
        "create_time": c["create_time"],
        "digg_count": 0,
        "reply_comment_total": c.get("reply_count", 0),
        "level": 2 if "parent_id" in c else 1,
        "aweme_id": c["work_id"],
        "reply_id": c.get("parent_id", "0"),
        "label_text": "",
        "user": {
            "uid": c["author_id"],
            "sec_uid": secret(user_id, c["author_id"]),
            "nickname": c["author"],
            "avatar_thumb": {"url_list": [AVATAR]},
        },
    }


def _comments_body(
    state: SiteState, what: str, user_id: str, rows: list[dict[str, Any]], window: tuple[int, int]
) -> dict[str, Any]:
    page, after, more, total = _window(rows, *window)
    if state.generation == "web":
        body: dict[str, Any] = {
            "status_code": 0,
            "status_msg": "",
            "comments": [_web_comment(user_id, c) for c in page],
            "cursor": after,
            "has_more": int(more),
            "total": total,
        }
    else:
        body = {
            "status_code": 0,
            "status_msg": "",
            "comment_info_list": [_creator_comment(user_id, c, _replied(user_id, c)) for c in page],
            "cursor": after,
            "has_more": more,
            "total_count": total,
        }
    body["extra"] = {"now": _now_ms()}
    return _drifted(state, what, body)


def _replied(user_id: str, c: dict[str, Any]) -> dict[str, Any] | None:
    if "reply_to" not in c:
        return None
    return {
        "user_id": secret(user_id, c["reply_to"]),
        "screen_name": c["reply_to"],
        "avatar_url": "",
    }


def comment_list(
    state: SiteState, user_id: str, work_id: str, cursor: int, count: int
) -> dict[str, Any]:
    rows = state.comment_list(user_id, work_id)
    return _comments_body(state, "comments", user_id, rows, (cursor, count))


def reply_list(
    state: SiteState, user_id: str, comment_id: str, cursor: int, count: int
) -> dict[str, Any] | None:
    rows = state.reply_list(user_id, comment_id)
    if rows is None:
        return None
    return _comments_body(state, "replies", user_id, rows, (cursor, count))


def contacts(state: SiteState, user_id: str) -> dict[str, Any]:
    users = []
    for uid in state.contacts(user_id):
        name = state.fan_name(uid) or uid
        users.append(
            {
                "user_id": uid,
                "user": {
                    "SecretUseId": secret(user_id, uid),
                    "ShortId": str(int(uid) % 10**10),
                    "nickname": name,
                    "avatar_thumb": {"url_list": [AVATAR]},
                },
            }
        )
    body = {"status_code": 0, "status_msg": "", "user_list": users, "extra": {"now": _now_ms()}}
    return _drifted(state, "contacts", body)


def conversation_id(user_id: str, fan_uid: str) -> str:
    a, b = sorted((user_id, fan_uid), key=lambda u: (len(u), u))
    return f"0:1:{a}:{b}"


def history(state: SiteState, user_id: str, fan_uid: str, cursor: int, count: int) -> bytes:
    """The ``count`` messages before the newest ``cursor`` of a conversation, oldest
    first, as the chat page receives them (not JSON: see the module's docstring)."""
    kept = state.messages(user_id, fan_uid)
    end = max(0, len(kept) - cursor)
    start = max(0, end - count)
    conv = conversation_id(user_id, fan_uid)
    body = {
        "messages": [
            {
                "server_id": m["id"],
                "conversation_id": conv,
                "sender": fan_uid,
                "sec_sender": secret(user_id, fan_uid),
                "text": m["text"],
                "created_at": m["created_ms"],
            }
            for m in kept[start:end]
        ],
        "cursor": cursor + (end - start),
        "has_more": start > 0,
    }
    return base64.b64encode(json.dumps(body).encode())
