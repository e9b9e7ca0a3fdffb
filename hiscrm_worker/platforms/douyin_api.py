"""Everything douyin-specific that changes when the site changes: addresses, the
parameters the pages send, the selectors and page scripts of the creator centre, login
markers, and the parsers of what the logged-in pages receive.

Every parser checks the envelope it expects. A response of another shape raises
:class:`PlatformChanged` (``platform_changed: <address>: <what is missing>``), a
``status_code`` other than 0 :class:`PlatformRefused` (``platform_error: …``) and
``status_code`` 8, "not logged in", :class:`SessionExpired`: a site change is never
read as "no new items". The facts they rely on (tests/worker/fixtures/douyin holds
payloads written from them):

- Works: ``/aweme/v1/creator/item/list/`` → ``item_info_list[]`` (``item_id``, a title
  in ``title`` / ``description``, a comment count), ``cursor``, ``has_more``.
- Comments, two generations of the same list. The creator centre's
  ``/aweme/v1/creator/comment/list/`` and ``…/comment/reply/list/``:
  ``comment_info_list[]`` of ``comment_id``, ``text``, ``create_time`` (epoch seconds,
  UTC, as a string), ``digg_count`` / ``reply_count`` (strings), ``level`` (1 comment,
  2 reply), ``is_author``, ``user_info{user_id (encrypted, per account), screen_name,
  avatar_url}``, ``reply_to_user_info`` (an object, with an empty ``screen_name`` on a
  top-level comment), then ``cursor``, ``has_more``, ``total_count``, ``extra.now``.
  The newer web pages' ``/aweme/v1/web/comment/list/select/`` and ``…/list/reply/``:
  ``comments[]`` of ``cid``, ``text``, ``create_time`` (a number), ``digg_count``,
  ``reply_comment_total``, ``user{uid, sec_uid, nickname}``, ``aweme_id``,
  ``reply_id``, then ``cursor``, ``has_more`` (0/1), ``total``. The work (``item_id``
  / ``aweme_id``) and a reply's parent (``comment_id``) are in the request's address.
  Comment ids are 64-bit numbers whose top bits are the posting second: they order
  the lists (the key :mod:`.paging` needs).
- DMs: the chat page loads its contacts from ``/aweme/v1/creator/im/user_detail/``
  (``user_list[].{user_id, user{SecretUseId, ShortId, nickname, avatar_thumb}}``); its
  messages come from the IM service as protobuf and are read from the component props
  of the message list's DOM nodes (``__reactFiber…`` / ``__reactProps…``): ``serverId``,
  ``conversationId`` (``0:1:<uid>:<uid>``), ``sender``, ``createdAt`` and ``content``,
  a JSON string whose ``text`` is the message.
- Identity: ``/aweme/v1/web/user/profile/self/`` → ``user{uid, sec_uid, unique_id}``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from hiscrm_bus.messages import CrawledItem

from .base import PlatformChanged, PlatformRefused, SessionExpired

# --- addresses ------------------------------------------------------------------------

HOME_URL = "https://www.douyin.com/"
CREATOR_ORIGIN = "https://creator.douyin.com"
COMMENT_PAGE_PATH = "/creator-micro/interactive/comment"
CHAT_PAGE_PATH = "/creator-micro/data/following/chat"
PROFILE_SELF_PATH = "/aweme/v1/web/user/profile/self/"
WORK_LIST_PATHS = ("/aweme/v1/creator/item/list/",)
COMMENT_LIST_PATHS = ("/aweme/v1/creator/comment/list/", "/aweme/v1/web/comment/list/select/")
REPLY_LIST_PATHS = ("/aweme/v1/creator/comment/reply/list/", "/aweme/v1/web/comment/list/reply/")
CONTACTS_PATHS = ("/aweme/v1/creator/im/user_detail/",)
# what the pages' requests carry (the work, a reply list's parent, the page's cursor)
WORK_PARAMS = ("item_id", "aweme_id")
PARENT_PARAMS = ("comment_id",)
CURSOR_PARAM = "cursor"
_SHOWN_PARAMS = (*WORK_PARAMS, *PARENT_PARAMS, CURSOR_PARAM, "count")  # no tokens in errors
LOGIN_PAGE_MARKERS = ("/login", "passport.douyin.com", "sso.douyin.com")
NOT_LOGGED_IN = 8  # status_code of an API call without a live session

# --- login ----------------------------------------------------------------------------

LOGIN_BUTTON = "[data-e2e='login-button'], #login-pannel, text=登录"
QR_IMAGE = (
    "[data-e2e='qrcode-image'] img, .web-login-scan-code__content img, img[aria-label='二维码']"
)
QR_EXPIRED = "text=二维码已失效, text=二维码已过期"
QR_SCANNED = "text=扫码成功"
LOGIN_COOKIE = "LOGIN_STATUS"
LOGIN_STORAGE_KEY = "HasUserLogin"

# --- the comment page (the sandbox's pages follow the same) ---------------------------

WORKS_PICKER = 'span:has-text("选择作品")'
WORK_ITEM = '[class*="container-Lkxos9"]'  # one per work in the picker, newest first
WORK_SCROLL = ".semi-modal-body"  # the picker's list: scrolled down for older works
COMMENT_SCROLL = '[role="tabpanel"]'  # the comment list: scrolled down for older pages
COMMENT_ITEM = '[role="tabpanel"] [class*="comment-item"]'  # top-level comments, in order
REPLY_BUTTON = '[class*="load-more"]'  # in a comment: 查看N条回复, then more replies
REPLY_ITEM = '[class*="reply-item"]'  # in a comment: its replies shown

# --- the chat page ---------------------------------------------------------------------

CONVERSATION_ITEM = '[role="list-item"]'  # one per contact, in user_detail's order
MESSAGE_BOX = '[class*="box-content-jSgLQF"]'  # its first child holds one node a message
HISTORY_END = '[class*="no-more"]'  # shown above the oldest message when there is no older

SCROLL_DOWN = "(el) => { el.scrollTop = el.scrollHeight; el.dispatchEvent(new Event('scroll')); }"
SCROLL_UP = "(el) => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }"
# the index of the comment whose text this is, nearest the index expected
FIND_COMMENT = """([sel, text, hint]) => {
  const norm = (s) => (s || '').replace(/\\s+/g, ' ').trim();
  const want = norm(text);
  let best = -1;
  document.querySelectorAll(sel).forEach((el, i) => {
    const nearer = best < 0 || Math.abs(i - hint) < Math.abs(best - hint);
    if (norm(el.textContent).includes(want) && nearer) best = i;
  });
  return best;
}"""
# the message objects in the component props of the message list's nodes (a bounded
# search of each node's fiber / props for an object with serverId and conversationId)
READ_MESSAGES = """([box, end]) => {
  const root = document.querySelector(box);
  if (!root) return null;
  const nodes = root.firstElementChild ? Array.from(root.firstElementChild.children) : [];
  const keep = ['serverId', 'conversationId', 'sender', 'secSender', 'content', 'createdAt',
                'isFromMe', 'type'];
  // a 64-bit id may be a BigInt or a Long object: its decimal text
  const plain = (v) => typeof v === 'bigint' || (v !== null && typeof v === 'object'
    && !Array.isArray(v) && Object.getPrototypeOf(v) !== Object.prototype
    && typeof v.toString === 'function') ? String(v) : v;
  function search(start) {
    const queue = [[start, 0]], seen = new Set();
    while (queue.length && seen.size < 300) {
      const [o, depth] = queue.shift();
      if (!o || typeof o !== 'object' || seen.has(o) || depth > 12) continue;
      seen.add(o);
      if ('serverId' in o && 'conversationId' in o) return o;
      for (const k of ['memoizedProps', 'pendingProps', 'props', 'child', 'sibling', 'children',
                       'message', 'msg']) {
        const v = o[k];
        if (Array.isArray(v)) v.forEach((x) => queue.push([x, depth + 1]));
        else if (v && typeof v === 'object') queue.push([v, depth + 1]);
      }
    }
    return null;
  }
  let framework = 0;
  const messages = [];
  for (const node of nodes) {
    const keys = Object.keys(node).filter(
      (k) => k.startsWith('__reactFiber') || k.startsWith('__reactProps'));
    if (!keys.length) continue;
    framework += 1;
    for (const k of keys) {
      const found = search(node[k]);
      if (!found) continue;
      const m = {};
      for (const f of keep) if (f in found) m[f] = plain(found[f]);
      messages.push(m);
      break;
    }
  }
  return {nodes: nodes.length, framework, messages, end: !!document.querySelector(end)};
}"""


# --- what the parsers give -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Work:
    item_id: str
    title: str
    comment_count: int | None  # None: the list does not say


@dataclass(frozen=True, slots=True)
class WorkPage:
    works: tuple[Work, ...]
    cursor: str | None
    has_more: bool


@dataclass(frozen=True, slots=True)
class CommentPage:
    """One page of a work's comments, or of a comment's replies (``parent_id``); each
    comment with the number of replies it has."""

    comments: tuple[tuple[CrawledItem, int], ...]
    cursor: str | None
    has_more: bool
    total: int | None
    work_id: str
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class Contact:
    user_id: str
    nickname: str
    sec_uid: str
    short_id: str


# --- helpers ---------------------------------------------------------------------------


def address(url: str) -> str:
    """A response's address for messages: path and the parameters that name what it
    holds, never the page's tokens and signatures."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    shown = [(k, query[k][0]) for k in _SHOWN_PARAMS if k in query]
    tail = f"?{urlencode(shown)}" if shown else ""
    return f"{parts.scheme}://{parts.netloc}{parts.path}{tail}"


def param(url: str, names: Iterable[str]) -> str | None:
    query = parse_qs(urlsplit(url).query)
    for name in names:
        if query.get(name, [""])[0]:
            return query[name][0]
    return None


def matches(url: str, paths: Iterable[str]) -> bool:
    """Whether a response is one of ``paths`` (the site may mount them under a prefix)."""
    path = urlsplit(url).path
    return any(path.endswith(p) for p in paths)


def _shape(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = ", ".join(sorted(str(k) for k in obj)[:12])
        return f"an object with keys: {keys or 'none'}"
    return "null" if obj is None else f"a {type(obj).__name__}"


def _require(obj: Any, keys: Iterable[str], where: str, what: str) -> dict[str, Any]:
    """``obj`` as an object holding every key of ``keys``, or PlatformChanged naming
    the ones missing."""
    if not isinstance(obj, dict):
        raise PlatformChanged(where, f"{what} is {_shape(obj)}, not an object")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise PlatformChanged(
            where, f"{what} lacks {', '.join(repr(k) for k in missing)} (it is {_shape(obj)})"
        )
    return obj


def envelope(doc: Any, where: str, keys: Iterable[str] = ()) -> dict[str, Any]:
    """The response object, checked: ``status_code`` 0 and every key of ``keys``."""
    body = _require(doc, ("status_code",), where, "the response")
    code = body["status_code"]
    if code not in (0, "0"):
        msg = str(body.get("status_msg") or body.get("message") or "no message")[:200]
        if code in (NOT_LOGGED_IN, str(NOT_LOGGED_IN)):
            raise SessionExpired(
                f"douyin refused the session at {where}: status_code {code} ({msg})"
            )
        raise PlatformRefused(where, f"status_code {code} ({msg})")
    return _require(body, keys, where, "the response")


def _list(body: Mapping[str, Any], key: str, where: str) -> list[Any]:
    raw = body[key]
    if raw is None:  # the site sends null for an empty list
        return []
    if not isinstance(raw, list):
        raise PlatformChanged(where, f"{key!r} is {_shape(raw)}, not a list")
    return raw


def _int(value: Any, where: str, what: str) -> int:
    if isinstance(value, bool):
        raise PlatformChanged(where, f"{what} is {value!r}, not a number")
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise PlatformChanged(where, f"{what} is {value!r}, not a number") from None


def epoch(value: Any, where: str, what: str = "create_time") -> datetime:
    """Epoch seconds (or milliseconds), as a number or a string, in UTC: douyin's times
    are UTC epochs, no +8 h correction."""
    try:
        seconds = float(value)
        if seconds > 1e12:  # milliseconds
            seconds /= 1000
        return datetime.fromtimestamp(seconds, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise PlatformChanged(where, f"{what} is {value!r}, not an epoch time") from None


def _paging(body: Mapping[str, Any], where: str) -> tuple[str | None, bool]:
    has_more = bool(body["has_more"])
    cursor = body["cursor"]
    if has_more and cursor in (None, ""):
        raise PlatformChanged(where, "has_more without a cursor")
    return (None if cursor is None else str(cursor)), has_more


# --- parsers ---------------------------------------------------------------------------


def parse_profile(doc: Any, where: str = PROFILE_SELF_PATH) -> tuple[str, dict[str, Any]]:
    """(uid, user_info) from ``/aweme/v1/web/user/profile/self/``: ``uid`` is the
    platform user id (it and ``sec_uid`` never change; the 抖音号 ``unique_id``, shown
    to people, can), and user_info records all three."""
    user = _require(envelope(doc, where, ("user",))["user"], ("uid",), where, "'user'")
    uid = str(user["uid"] or "").strip()
    if not uid:
        raise PlatformChanged(where, "'user' has an empty uid")
    info: dict[str, Any] = {"uid": uid}
    for key in ("sec_uid", "unique_id", "short_id", "nickname"):
        if user.get(key) not in (None, ""):
            info[key] = str(user[key])
    thumb = user.get("avatar_thumb")
    if isinstance(thumb, dict) and isinstance(thumb.get("url_list"), list) and thumb["url_list"]:
        info["avatar"] = str(thumb["url_list"][0])
    return uid, info


def parse_work_list(doc: Any, url: str) -> WorkPage:
    """A page of the works picker's list (newest first)."""
    where = address(url)
    body = envelope(doc, where, ("item_info_list", "cursor", "has_more"))
    works = []
    for raw in _list(body, "item_info_list", where):
        w = _require(raw, ("item_id",), where, "a work")
        title = next((w[k] for k in ("title", "description", "desc") if w.get(k)), "")
        count = w.get("comment_count")
        if count is None and isinstance(w.get("metrics"), dict):
            count = w["metrics"].get("comment_count")
        works.append(
            Work(
                str(w["item_id"]),
                str(title)[:200],
                None if count is None else _int(count, where, "a work's comment_count"),
            )
        )
    cursor, has_more = _paging(body, where)
    return WorkPage(tuple(works), cursor, has_more)


def _generation(url: str, creator: str, web: str) -> str:
    path = urlsplit(url).path
    if path.endswith(creator):
        return "creator"
    if path.endswith(web):
        return "web"
    raise PlatformChanged(address(url), "not an address of a comment list")


def _comment(c: Any, gen: str, where: str, extra: dict[str, Any]) -> tuple[CrawledItem, int]:
    if gen == "creator":
        c = _require(c, ("comment_id", "text", "create_time", "user_info"), where, "a comment")
        user = _require(c["user_info"], ("user_id", "screen_name"), where, "a comment's user_info")
        reply_to = c.get("reply_to_user_info")
        cid, replies = str(c["comment_id"]), c.get("reply_count") or 0
        author, author_id = user["screen_name"], user["user_id"]
        more: dict[str, Any] = {"is_author": bool(c.get("is_author"))}
        if isinstance(reply_to, dict) and reply_to.get("screen_name"):
            more["reply_to"] = str(reply_to["screen_name"])
    else:
        c = _require(c, ("cid", "text", "create_time", "user"), where, "a comment")
        user = _require(c["user"], ("uid", "nickname"), where, "a comment's user")
        cid, replies = str(c["cid"]), c.get("reply_comment_total") or 0
        author, author_id = user["nickname"], user["uid"]
        more = {"is_author": c.get("label_text") == "作者"}
        if user.get("sec_uid"):
            more["sec_uid"] = str(user["sec_uid"])
    if not cid.strip():
        raise PlatformChanged(where, "a comment has an empty id")
    count = _int(replies, where, "reply_count")
    item = CrawledItem(
        kind="comment",
        item_id=cid,
        text=str(c["text"] or ""),
        author=str(author or ""),
        created_at=epoch(c["create_time"], where),
        extra={
            **extra,
            "level": _int(c.get("level") or (2 if "parent_id" in extra else 1), where, "level"),
            "user_id": str(author_id),
            "digg_count": _int(c.get("digg_count") or 0, where, "digg_count"),
            "reply_count": count,
            **more,
        },
    )
    return item, count


def _comment_page(
    doc: Any, url: str, paths: tuple[str, str], parent: bool, title: str
) -> CommentPage:
    where = address(url)
    gen = _generation(url, *paths)
    key, total_key = (
        ("comment_info_list", "total_count") if gen == "creator" else ("comments", "total")
    )
    body = envelope(doc, where, (key, "cursor", "has_more"))
    work_id = param(url, WORK_PARAMS)
    parent_id = param(url, PARENT_PARAMS) if parent else None
    raw = _list(body, key, where)
    if work_id is None and gen == "web" and raw and isinstance(raw[0], dict):
        work_id = str(raw[0].get("aweme_id") or "") or None
    if work_id is None:
        raise PlatformChanged(where, f"the address names no work ({' / '.join(WORK_PARAMS)})")
    if parent and parent_id is None:
        raise PlatformChanged(where, "the address names no parent comment (comment_id)")
    extra: dict[str, Any] = {"work_id": work_id, "work_title": title}
    if parent_id is not None:
        extra["parent_id"] = parent_id
    comments = tuple(_comment(c, gen, where, extra) for c in raw)
    cursor, has_more = _paging(body, where)
    total = body.get(total_key)
    return CommentPage(
        comments,
        cursor,
        has_more,
        None if total is None else _int(total, where, total_key),
        work_id,
        parent_id,
    )


def parse_comment_page(doc: Any, url: str, work_title: str = "") -> CommentPage:
    """A page of a work's comments, of either generation (the address says which)."""
    return _comment_page(doc, url, COMMENT_LIST_PATHS, False, work_title)


def parse_reply_page(doc: Any, url: str, work_title: str = "") -> CommentPage:
    """A page of a comment's replies, of either generation."""
    return _comment_page(doc, url, REPLY_LIST_PATHS, True, work_title)


def parse_contacts(doc: Any, url: str) -> list[Contact]:
    """The chat page's contacts from ``/aweme/v1/creator/im/user_detail/``."""
    where = address(url)
    body = envelope(doc, where, ("user_list",))
    contacts = []
    for raw in _list(body, "user_list", where):
        entry = _require(raw, ("user_id", "user"), where, "a contact")
        user = _require(entry["user"], ("nickname",), where, "a contact's user")
        contacts.append(
            Contact(
                str(entry["user_id"]),
                str(user["nickname"] or ""),
                str(user.get("SecretUseId") or user.get("sec_uid") or ""),
                str(user.get("ShortId") or user.get("short_id") or ""),
            )
        )
    return contacts


MESSAGE_KEYS = ("serverId", "conversationId", "sender", "content", "createdAt")
SYSTEM_MESSAGE = 701  # content.aweType of "we follow each other now": not a DM


def parse_chat_messages(
    raw: list[Any], where: str, names: Mapping[str, str], me: str | None
) -> list[CrawledItem]:
    """DMs from the message objects of the chat page's component props (READ_MESSAGES),
    in the page's order; ``names`` gives the sender's name by uid, ``me`` is the
    account's own uid."""
    items = []
    for props in raw:
        m = _require(
            props,
            ("serverId", "conversationId", "sender", "content", "createdAt"),
            where,
            "a message",
        )
        content = m["content"]
        if isinstance(content, str):
            with contextlib.suppress(ValueError):
                content = json.loads(content) if content.lstrip().startswith("{") else content
        if isinstance(content, dict):
            if content.get("aweType") == SYSTEM_MESSAGE:
                continue
            text = content.get("text")
            if text is None:
                text = f"[{content.get('aweType', 'message')}]"
        else:
            text = content
        sender = str(m["sender"])
        out = bool(m.get("isFromMe")) or (me is not None and sender == me)
        server_id = str(m["serverId"])
        if not server_id.strip() or server_id == "0":
            raise PlatformChanged(where, "a message has an empty serverId")
        items.append(
            CrawledItem(
                kind="dm",
                item_id=server_id,
                text=str(text),
                author=names.get(sender, sender),
                created_at=epoch(m["createdAt"], where, "createdAt"),
                extra={
                    "conversation_id": str(m["conversationId"]),
                    "sender_id": sender,
                    "direction": "out" if out else "in",
                },
            )
        )
    return items
