"""The creator centre's comment page, walked: the works picker (选择作品) lists the
account's works, newest first; the newest ``works`` of them are selected in turn; each
work's comments are scrolled down page by page; and the replies of comments that have
some are opened (查看N条回复) and paged the same way. Every item comes from the
responses the page itself receives.

What a crawl takes, at most ``max_items_per_crawl`` over all works and replies:

- **Comments**, per work with :mod:`.paging`: newest first back to the newest comment
  already taken, with gaps resumed later. The comment list's cursor is an offset the
  page can only scroll forward, so reading at an older cursor means selecting the
  work again and scrolling to it. A work first listed after the account's first walk
  on this worker is new: all its comments are; the works of that first walk start
  with their newest comments, the rest is history (as :mod:`.paging` says).
- **Replies**, of every comment taken now, and of a comment taken before whose
  ``reply_count`` changed, as far as the pages read show it (the first page of each
  work is read on every crawl; new replies to older comments are found when their
  comment is on a page read). A reply list is read whole (its order is the site's)
  and the replies not taken before are taken, newest first; what the bound leaves is
  taken by the next crawls.

Items carry their work (``work_id``, ``work_title``) and, for replies, ``parent_id``
in ``extra``; the work is only in the request's address, so that is where it is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from playwright.async_api import Page

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import CrawledItem

from . import douyin_api as api
from .base import Fetched, PlatformChanged
from .creator import CreatorSite, Driver, Move, asks
from .paging import MAX_PAGES, ListPage, PageReader, Progress, Tracker, crawl

DEFAULT_WORKS = 10  # the newest works walked per crawl
MAX_REPLY_PAGES = 500  # pages of one reply list per crawl
MAX_PARENTS = 5000  # comments with replies remembered per account
MAX_REPLIES_KEPT = 10_000  # reply ids remembered per comment


@dataclass
class _Parent:
    """A comment with replies, as this worker knows it."""

    work_id: str
    text: str  # to find it on the page
    count: int = 0  # its reply_count when last seen
    done: int = -1  # its reply_count when its replies were last taken whole (-1: never)
    seen: dict[str, None] = field(default_factory=dict)  # reply ids taken (an ordered set)


@dataclass
class _Account:
    user: str | None
    works: set[str] | None = None  # every work listed so far (None: never walked)
    parents: dict[str, _Parent] = field(default_factory=dict)


def _taken_before(progress: Progress, key: int) -> bool:
    if progress.newest is None or key > progress.newest:
        return False
    return not any(g.below < key < g.above for g in progress.gaps)


class CommentWalker:
    """The comment walk of one site, with each account's progress (in memory)."""

    def __init__(self, site: CreatorSite, works: int = DEFAULT_WORKS) -> None:
        self.site = site
        self.works = works
        self._lists = Tracker()
        self._accounts: dict[str, _Account] = {}

    def forget(self, account_id: str) -> None:
        self._lists.forget(account_id)
        self._accounts.pop(account_id, None)

    def _state(self, account: AccountConfig) -> _Account:
        state = self._accounts.get(account.id)
        if state is None or state.user != account.platform_user_id:
            state = self._accounts[account.id] = _Account(account.platform_user_id)
        return state

    async def fetch(self, page: Page, account: AccountConfig) -> Fetched:
        """One crawl of the account's comments and replies (see the module's contract).
        Its progress is kept only if the whole crawl succeeds: a crawl that fails part
        way marks nothing taken, and the next one starts from the same place."""
        async with Driver(page, self.site) as d:
            return await self._walk(_CommentPage(d), account)

    async def _walk(self, view: _CommentPage, account: AccountConfig) -> Fetched:
        state = self._state(account)
        user = account.platform_user_id
        await view.open()
        works = await view.works(self.works)
        parents = dict(state.parents)  # changed copy-on-write, kept at the end
        progress: dict[str, Progress] = {}
        budget = account.max_items_per_crawl
        taken: list[CrawledItem] = []
        left = 0
        for index, work in enumerate(works):
            kind = f"comments:{work.item_id}"
            before = self._lists.get(account.id, kind, user)
            if (
                before.newest is None
                and state.works is not None
                and work.item_id not in state.works
            ):
                before = Progress(newest=0, had=0)  # new since the last walk: all of it is new
            waiting = [p for p in parents.values() if p.work_id == work.item_id]
            room = budget - len(taken)
            if room <= 0:  # no room to visit it (a new work stays new)
                progress[kind] = before
                left += _estimate(before, work) + sum(_owed(p) for p in waiting)
                continue
            if work.comment_count == 0 and not waiting:
                if before.newest is None:  # known empty: what comes later is new
                    progress[kind] = Progress(0, 0)
                continue
            view.seen = []
            fetched, progress[kind] = await crawl(before, view.reader(index, work), room)
            taken += fetched.items
            left += progress[kind].left
            new = {i.item_id for i in fetched.items}
            for item, replies, key in view.seen:
                parent = parents.get(item.item_id)
                if parent is None:
                    if replies <= 0 or not (item.item_id in new or _taken_before(before, key)):
                        continue  # no replies, or a comment not taken yet (history or a gap)
                    parent = _Parent(work.item_id, item.text)
                parents[item.item_id] = replace(parent, count=replies)
            got, owed = await self._replies(view, index, work, parents, budget - len(taken))
            taken += got
            left += owed
        for kind, after in progress.items():
            self._lists.put(account.id, kind, user, after)
        while len(parents) > MAX_PARENTS:
            del parents[next(iter(parents))]
        state.parents = parents
        state.works = (state.works or set()) | {w.item_id for w in works}
        return Fetched(tuple(taken), left)

    async def _replies(
        self,
        view: _CommentPage,
        index: int,
        work: api.Work,
        parents: dict[str, _Parent],
        room: int,
    ) -> tuple[list[CrawledItem], int]:
        """The new replies of the work's comments whose replies changed, at most
        ``room``, and how many are owed to later crawls; ``parents`` follows."""
        taken: list[CrawledItem] = []
        owed = 0
        todo = [
            (pid, p)
            for pid, p in parents.items()
            if p.work_id == work.item_id and p.count > 0 and p.done != p.count
        ]
        for pid, parent in todo:
            if len(taken) >= room:
                owed += _owed(parent)
                continue
            replies = await view.replies(index, work, pid, parent.text)
            if replies is None:  # the comment is gone
                del parents[pid]
                continue
            new = [r for r in replies if r.item_id not in parent.seen]
            new.sort(key=lambda r: r.created_at, reverse=True)
            take = new[: room - len(taken)]
            taken += take
            seen = dict(parent.seen) | {r.item_id: None for r in take}
            while len(seen) > MAX_REPLIES_KEPT:
                del seen[next(iter(seen))]
            done = parent.count if len(take) == len(new) else parent.done
            parents[pid] = replace(parent, seen=seen, done=done)
            owed += len(new) - len(take)
        return taken, owed


def list_page(got: api.CommentPage, site: CreatorSite, where: str) -> ListPage:
    """A page of comments as :mod:`.paging` reads it: each keyed by its id's order."""
    entries = [(site.key(item.item_id, where), item) for item, _ in got.comments]
    return ListPage(entries, got.cursor, got.has_more, got.total)


def _owed(parent: _Parent) -> int:
    return 0 if parent.done == parent.count else max(1, parent.count - len(parent.seen))


def _estimate(progress: Progress, work: api.Work) -> int:
    """New comments of a work this crawl had no room to read: from the count the works
    list gives and the list's total at its last crawl."""
    if work.comment_count is None or progress.had is None:
        return progress.left
    return max(progress.left, work.comment_count - progress.had)


def _numeric_after(a: str | None, b: str) -> bool:
    """Whether cursor ``a`` lies past cursor ``b`` (offset cursors; others never do)."""
    return a is not None and a.isdigit() and b.isdigit() and int(a) > int(b)


class _CommentPage:
    """The comment page during one crawl: the works its picker listed, the work its
    list shows, and the comments rendered so far (in order)."""

    def __init__(self, d: Driver) -> None:
        self.d = d
        self.site = d.site
        self.listed: list[api.Work] = []
        self.picker_open = False
        self.work: str | None = None  # the work the list shows
        self.rendered: list[str] = []  # comment ids in the list, in order
        self.cursor: str | None = None  # the cursor of the last page read (None: the first)
        self.last: api.CommentPage | None = None
        self.last_read = ListPage([], None, False)  # the last page read, as paging saw it
        self.seen: list[tuple[CrawledItem, int, int]] = []  # (comment, reply_count, key) read

    async def open(self) -> None:
        await self.d.goto(api.COMMENT_PAGE_PATH)

    def _picker(self) -> Move:
        return self.d.click(self.d.page.locator(api.WORKS_PICKER).first, api.WORKS_PICKER)

    async def works(self, n: int) -> list[api.Work]:
        """The newest ``n`` works, from the picker's list (scrolled for more)."""
        doc, url = await self.d.answer(api.WORK_LIST_PATHS, self._picker())
        self.picker_open = True
        got = api.parse_work_list(doc, url)
        self.listed = list(got.works)
        await self.d.shows(api.WORK_ITEM, len(self.listed), "works")
        for _ in range(MAX_PAGES):
            if len(self.listed) >= n or not got.has_more or got.cursor is None:
                break
            doc, url = await self.d.answer(
                api.WORK_LIST_PATHS,
                self.d.run(api.WORK_SCROLL, api.SCROLL_DOWN),
                asks(cursor=got.cursor),
            )
            got = api.parse_work_list(doc, url)
            self.listed += got.works
            await self.d.shows(api.WORK_ITEM, len(self.listed), "works")
        return self.listed[:n]

    # the comment list

    def _page(self, doc: object, url: str, work: api.Work) -> ListPage:
        got = api.parse_comment_page(doc, url, work.title)
        where = api.address(url)
        if got.work_id != work.item_id:
            raise PlatformChanged(where, f"selecting work {work.item_id} listed {got.work_id}")
        self.cursor = api.param(url, (api.CURSOR_PARAM,))
        self.last = got
        self.last_read = list_page(got, self.site, where)
        for (key, item), (_, replies) in zip(self.last_read.entries, got.comments, strict=True):
            self.seen.append((item, replies, key))
            self.rendered.append(item.item_id)
        return self.last_read

    async def _select(self, index: int, work: api.Work) -> ListPage:
        """Select the work in the picker: its list starts again at the first page."""
        if not self.picker_open:
            await self._picker()()
        self.d.forget_received()  # the list starts again: what came before is gone
        entry = self.d.page.locator(api.WORK_ITEM).nth(index)
        doc, url = await self.d.answer(
            api.COMMENT_LIST_PATHS,
            self.d.click(entry, f"{api.WORK_ITEM} (#{index + 1})"),
            asks(work=work.item_id),
        )
        self.picker_open = False
        self.work = work.item_id
        self.rendered = []
        return await self._shown(self._page(doc, url, work))

    async def _shown(self, page: ListPage) -> ListPage:
        # a page renders every comment it receives (a repeated one once or twice)
        await self.d.shows(api.COMMENT_ITEM, len(set(self.rendered)), "comments")
        return page

    async def _more(self, work: api.Work) -> ListPage:
        """Scroll the list down: the next (older) page."""
        assert self.last is not None and self.last.cursor is not None
        doc, url = await self.d.answer(
            api.COMMENT_LIST_PATHS,
            self.d.run(api.COMMENT_SCROLL, api.SCROLL_DOWN),
            asks(cursor=self.last.cursor, work=work.item_id),
        )
        return await self._shown(self._page(doc, url, work))

    def _more_to_read(self) -> bool:
        return self.last is not None and self.last.has_more and self.last.cursor is not None

    def reader(self, index: int, work: api.Work) -> PageReader:
        """The work's comment list as :mod:`.paging` reads it: the page at a cursor is
        reached by scrolling down, after selecting the work again if the list is past
        it (or shows another work)."""

        async def read(cursor: str | None) -> ListPage:
            if cursor is None or self.work != work.item_id or _numeric_after(self.cursor, cursor):
                got = await self._select(index, work)
            else:
                got = self.last_read
            for _ in range(MAX_PAGES):
                if cursor is None or self.cursor == cursor or _numeric_after(self.cursor, cursor):
                    break
                if not self._more_to_read():
                    break
                got = await self._more(work)
            return got

        return read

    # replies

    async def _show(self, index: int, work: api.Work, parent: str) -> bool:
        """Get comment ``parent`` rendered (False: the work no longer lists it)."""
        reselected = False
        for _ in range(MAX_PAGES):
            if self.work == work.item_id and parent in self.rendered:
                return True
            if self.work == work.item_id and self._more_to_read():
                await self._more(work)
            elif not reselected:
                await self._select(index, work)
                reselected = True
            else:
                return False
        return False

    async def replies(
        self, index: int, work: api.Work, parent: str, text: str
    ) -> list[CrawledItem] | None:
        """Every reply of comment ``parent`` (None: the comment is no longer listed)."""
        if not await self._show(index, work, parent):
            return None
        hint = self.rendered.index(parent)
        at = await self.d.page.evaluate(api.FIND_COMMENT, [api.COMMENT_ITEM, text, hint])
        if not isinstance(at, int) or at < 0:
            raise PlatformChanged(
                self.d.where, f"comment {parent} is not shown ({api.COMMENT_ITEM})"
            )
        button = self.d.page.locator(api.COMMENT_ITEM).nth(at).locator(api.REPLY_BUTTON).first
        more = self.d.click(button, f"{api.REPLY_BUTTON} of comment {parent}")
        replies: list[CrawledItem] = []
        cursor: str | None = None  # None: the first page, at whatever cursor the page asks
        for _ in range(MAX_REPLY_PAGES):
            doc, url = await self.d.answer(api.REPLY_LIST_PATHS, more, asks(cursor=cursor))
            got = api.parse_reply_page(doc, url, work.title)
            if got.parent_id != parent:
                raise PlatformChanged(
                    api.address(url),
                    f"the replies button of comment {parent} listed the replies of {got.parent_id}",
                )
            replies += [item for item, _ in got.comments]
            shown = len({r.item_id for r in replies})
            await self.d.shows(api.REPLY_ITEM, shown, "replies", (api.COMMENT_ITEM, at))
            if not got.has_more or got.cursor is None:
                break
            cursor = got.cursor
        return replies
