"""The creator centre's chat page, walked: the page loads its contacts from
``user_detail`` (JSON) and lists one conversation per contact; opening one renders its
newest messages, and scrolling the message list up renders older ones. The messages
reach the page as protobuf; the crawler reads them where the page keeps them, in the
component props of the message list's DOM nodes (``douyin_api.READ_MESSAGES``).

What a crawl takes, at most ``max_items_per_crawl`` over all conversations, in the
list's order (the most recent conversation first): each conversation's messages not
taken before, de-duplicated by ``serverId``, newest first. A conversation keeps a
*floor*: every message at or below it (ids grow with time) was taken or is history;
above it, the ids taken. A crawl scrolls up to the floor, takes the newest new
messages it has room for, and raises the floor once it took them all, so what the
bound leaves is taken by the next crawls. On the account's first walk on this worker
a conversation gives its newest messages and the rest is history (as :mod:`.paging`
says of lists); a conversation that appears later is new, all of it. ``left`` counts
the new messages a crawl saw and had no room for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import CrawledItem

from . import douyin_api as api
from .base import Fetched, PlatformChanged
from .creator import CreatorSite, Driver

HISTORY_WAIT_S = 5.0  # how long older messages may take to show after a scroll up
MAX_HISTORY_LOADS = 200  # scrolls up per conversation and crawl
MAX_SEEN = 5000  # message ids remembered per conversation

_SHOWN = f"""([box, end, previous]) => {{
  const r = ({api.READ_MESSAGES})([box, end]);
  if (!r) return false;
  if (r.framework && !r.messages.length) return true;  // props of another shape: say so
  if (!r.messages.length) return false;
  const c = r.messages[r.messages.length - 1].conversationId;
  return String(c) !== previous && r.messages.every((m) => m.conversationId === c);
}}"""
_GREW = f"""([box, end, nodes]) => {{
  const r = ({api.READ_MESSAGES})([box, end]);
  return !!r && (r.nodes > nodes || r.end);
}}"""


@dataclass
class _Conversation:
    floor: int = 0  # every message with a key up to this was taken (or is history)
    seen: dict[str, None] = field(default_factory=dict)  # ids above it taken


@dataclass
class _Account:
    user: str | None
    walked: bool = False
    history: set[str] = field(default_factory=set)  # contacts listed at the first walk
    conversations: dict[str, _Conversation] = field(default_factory=dict)


@dataclass
class _Shown:
    """What an open conversation shows: its messages, oldest first."""

    messages: list[CrawledItem]
    nodes: int
    end: bool  # no older message to load


class ChatWalker:
    """The DM walk of one site, with each account's progress (in memory)."""

    def __init__(self, site: CreatorSite) -> None:
        self.site = site
        self._accounts: dict[str, _Account] = {}

    def forget(self, account_id: str) -> None:
        self._accounts.pop(account_id, None)

    def _state(self, account: AccountConfig) -> _Account:
        state = self._accounts.get(account.id)
        if state is None or state.user != account.platform_user_id:
            state = self._accounts[account.id] = _Account(account.platform_user_id)
        return state

    async def fetch(self, page: Page, account: AccountConfig) -> Fetched:
        """One crawl of the account's DMs (see the module's contract); its progress is
        kept only if the whole crawl succeeds."""
        async with Driver(page, self.site) as d:
            return await self._walk(_ChatPage(d, account), account)

    async def _walk(self, chat: _ChatPage, account: AccountConfig) -> Fetched:
        state = self._state(account)
        contacts = await chat.open()
        if not state.walked:
            state.history = {c.user_id for c in contacts}
        conversations = dict(state.conversations)  # changed copy-on-write, kept at the end
        budget = account.max_items_per_crawl
        taken: list[CrawledItem] = []
        left = 0
        for index, contact in enumerate(contacts):
            room = budget - len(taken)
            if room <= 0:
                break
            view, shown = await chat.show(index, contact)
            known = conversations.get(shown)
            history = known is None and contact.user_id in state.history
            conv = _Conversation() if known is None else replace(known, seen=dict(known.seen))
            view = await chat.older(view, conv, room, history)
            got, owed = _take(chat.keyed(view), conv, room, history, view.end)
            conversations[shown] = conv
            taken += got
            left += owed
        state.conversations = conversations
        state.walked = True
        return Fetched(tuple(taken), left)


def _take(
    keyed: list[tuple[int, CrawledItem]], conv: _Conversation, room: int, history: bool, end: bool
) -> tuple[list[CrawledItem], int]:
    """Of the messages shown (newest first, with their keys), the newest new ones, at
    most ``room``, and how many new ones stay; the conversation's floor follows."""
    if history:  # the newest ``room``; what is older is history
        take, rest = keyed[:room], keyed[room:]
        oldest = keyed[-1][0] if keyed else 0
        conv.floor = rest[0][0] if rest else (0 if end else oldest - 1)
        conv.seen = {m.item_id: None for _, m in take}
        return [m for _, m in take], 0
    new = [(k, m) for k, m in keyed if k > conv.floor and m.item_id not in conv.seen]
    take = new[:room]
    if len(take) == len(new):  # all taken: everything shown is below the new floor
        conv.floor = max([conv.floor] + [k for k, _ in keyed])
        conv.seen = {}
    else:
        conv.seen.update((m.item_id, None) for _, m in take)
        while len(conv.seen) > MAX_SEEN:
            del conv.seen[next(iter(conv.seen))]
    return [m for _, m in take], len(new) - len(take)


class _ChatPage:
    """The chat page during one crawl: its contacts and the conversation it shows."""

    def __init__(self, d: Driver, account: AccountConfig) -> None:
        self.d = d
        self.site = d.site
        self.me = account.platform_user_id
        self.names: dict[str, str] = {}
        self.own_name = str(account.user_info.get("nickname") or "me")
        self.conversation: str | None = None  # the conversation shown
        self.where = d.where

    async def open(self) -> list[api.Contact]:
        """Open the page: the contacts of the conversations it lists, in order."""
        doc, url = await self.d.answer(api.CONTACTS_PATHS, lambda: self.d.goto(api.CHAT_PAGE_PATH))
        contacts = api.parse_contacts(doc, url)
        self.names = {c.user_id: c.nickname for c in contacts}
        if self.me:
            self.names.setdefault(self.me, self.own_name)
        if not contacts:
            return []
        try:  # a virtual list shows the first conversations only
            await self.d.page.wait_for_function(
                "(sel) => document.querySelectorAll(sel).length > 0",
                arg=api.CONVERSATION_ITEM,
                timeout=self.site.timeout_s * 1000,
            )
        except PlaywrightTimeout:
            raise PlatformChanged(
                self.d.where,
                f"{len(contacts)} contact(s) but no conversation ({api.CONVERSATION_ITEM})",
            ) from None
        return contacts[: await self.d.page.locator(api.CONVERSATION_ITEM).count()]

    async def show(self, index: int, contact: api.Contact) -> tuple[_Shown, str]:
        """Open the conversation at ``index``: what it shows once the page shows it,
        and its conversation id."""
        self.where = f"{self.d.where} (conversation with {contact.user_id})"
        row = self.d.page.locator(api.CONVERSATION_ITEM).nth(index)
        await self.d.click(row, f"{api.CONVERSATION_ITEM} (#{index + 1})")()
        try:
            await self.d.page.wait_for_function(
                _SHOWN,
                arg=[api.MESSAGE_BOX, api.HISTORY_END, self.conversation],
                timeout=self.site.timeout_s * 1000,
            )
        except PlaywrightTimeout:
            raise PlatformChanged(
                self.where,
                f"no messages shown in {api.MESSAGE_BOX} within {self.site.timeout_s:g} s",
            ) from None
        view = await self._read()
        self.conversation = str(view.messages[-1].extra["conversation_id"])
        return view, self.conversation

    async def _read(self) -> _Shown:
        got: Any = await self.d.page.evaluate(api.READ_MESSAGES, [api.MESSAGE_BOX, api.HISTORY_END])
        if not isinstance(got, dict):
            raise PlatformChanged(self.where, f"no message list ({api.MESSAGE_BOX})")
        raw = got.get("messages") or []
        if got.get("framework") and not raw:
            raise PlatformChanged(
                self.where,
                "the message nodes carry component props without serverId and conversationId",
            )
        unique: dict[str, CrawledItem] = {}
        for item in api.parse_chat_messages(raw, self.where, self.names, self.me):
            unique.setdefault(item.item_id, item)
        if not unique:
            raise PlatformChanged(self.where, "the conversation shows no message")
        return _Shown(list(unique.values()), int(got.get("nodes") or 0), bool(got.get("end")))

    def keyed(self, view: _Shown) -> list[tuple[int, CrawledItem]]:
        """The messages shown with their keys, newest first."""
        keyed = [(self.site.key(m.item_id, self.where), m) for m in view.messages]
        return sorted(keyed, key=lambda km: km[0], reverse=True)

    async def older(self, view: _Shown, conv: _Conversation, room: int, history: bool) -> _Shown:
        """Scroll up for older messages until the conversation's floor shows (on a
        first walk: until more than ``room`` show), more than ``room`` new ones show,
        or there is none older."""
        for _ in range(MAX_HISTORY_LOADS):
            if view.end:
                break
            keyed = self.keyed(view)
            if history and len(keyed) > room:
                break
            if not history and keyed[-1][0] <= conv.floor:
                break
            new = [m for k, m in keyed if k > conv.floor and m.item_id not in conv.seen]
            if len(new) > room:
                break
            await self.d.run(api.MESSAGE_BOX, api.SCROLL_UP)()
            try:
                await self.d.page.wait_for_function(
                    _GREW,
                    arg=[api.MESSAGE_BOX, api.HISTORY_END, view.nodes],
                    timeout=HISTORY_WAIT_S * 1000,
                )
            except PlaywrightTimeout:
                break  # nothing older came: the page has no more to show
            view = await self._read()
        return view
