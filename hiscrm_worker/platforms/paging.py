"""Paging a newest-first list (comments, DMs) back to what was already taken.

Sites serve these lists one page per response, newest first, with a cursor for the
next (older) page, whether there is one, and often the list's total. A crawl must take
everything new since the last crawl, not only the first page, and at most
``max_items_per_crawl`` items. The contract, per account and list:

- **At most ``limit`` items per crawl, newest first.** A crawl first pages down from the
  top to the newest item it already took. When it reaches ``limit`` first, the new items
  it could not take form a *gap* (between the newest item taken before and the oldest
  item taken now), and the crawl reports how many items it left (``Fetched.left``).
- **Nothing left is lost.** Later crawls take the newest new items first, then spend
  what remains of ``limit`` on the gaps, newest gap first, resuming each at the cursor
  where it stopped. So an operator always sees the newest items at once, and a burst
  arrives over ``ceil(burst / limit)`` crawls. (Newest first also suits a store that
  keeps only the newest N: the items it would evict are the ones fetched last.)
- **Exactly once.** An item is returned once; the pages of an offset cursor that shift
  when items arrive mid-crawl repeat items, which are skipped, and never skip one.
- **Exact counts.** ``left`` is the number of items in the gaps, from the list's total
  (items deleted from the site make it an estimate; a gap that still has items counts
  at least 1, and is closed when paging finds its end).
- **The first crawl of an account on this worker** takes the newest ``limit`` items and
  leaves no gap: older items are history, not a backlog. Progress lives in the worker's
  memory, so a restarted worker, or the next owner after a failover, starts there again:
  of what arrived while nobody crawled the account, it takes the newest ``limit``.

A failed page read changes nothing: the crawl raises and the next one starts over from
the same progress, so items are not marked taken before they were returned.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import CrawledItem

from .base import Fetched

MAX_PAGES = 10_000  # page reads per crawl: a site whose cursor never ends cannot hold a task


@dataclass(frozen=True, slots=True)
class ListPage:
    """One response: ``(key, item)`` pairs newest first, where a key is a number the
    site gives each item in the order they were posted (the sandbox's ``seq``); the
    cursor of the next (older) page; whether there is one; the list's total when the
    site says it."""

    entries: Sequence[tuple[int, CrawledItem]]
    next_cursor: str | None
    has_more: bool
    total: int | None = None


# reads the page at a cursor; None is the first page
PageReader = Callable[[str | None], Awaitable[ListPage]]


@dataclass(frozen=True, slots=True)
class Gap:
    """New items not taken yet: keys strictly between ``below`` and ``above``.
    ``cursor`` reads a page at or above the gap's top (None: the first page)."""

    below: int
    above: int
    cursor: str | None
    left: int


@dataclass(frozen=True, slots=True)
class Progress:
    """What one list has given so far. ``newest`` is the key of the newest item taken
    (0: the list was empty; None: never crawled); ``had`` counts the list's items up to
    and including it, from the total the site reported then (None: not reported)."""

    newest: int | None = None
    had: int | None = None
    gaps: tuple[Gap, ...] = ()

    @property
    def left(self) -> int:
        return sum(g.left for g in self.gaps)


async def crawl(progress: Progress, read: PageReader, limit: int) -> tuple[Fetched, Progress]:
    """Take at most ``limit`` items new since ``progress``; return them (newest first,
    with how many are left) and the progress to keep for the next crawl."""
    top = await _from_top(progress, read, limit)
    taken = list(top.items)
    gaps = list(progress.gaps)
    if top.gap is not None:
        gaps.insert(0, top.gap)
    kept: list[Gap] = []
    for gap in gaps:
        budget = limit - len(taken)
        if budget <= 0:
            kept.append(gap)
            continue
        items, rest = await _from_gap(gap, read, budget)
        taken += items
        if rest is not None:
            kept.append(rest)
    after = Progress(top.newest, top.had, tuple(kept))
    return Fetched(tuple(taken), after.left), after


@dataclass(frozen=True, slots=True)
class _Top:
    items: list[CrawledItem]
    newest: int | None
    had: int | None
    gap: Gap | None


async def _from_top(progress: Progress, read: PageReader, limit: int) -> _Top:
    """Page down from the first page to the newest item taken before (or, on a first
    crawl, to ``limit`` items)."""
    mark = progress.newest
    page = await read(None)
    total = page.total
    cursor: str | None = None  # the cursor that read ``page``
    items: list[CrawledItem] = []
    first: int | None = None  # the key of the newest item taken now
    lowest: int | None = None  # the key of the oldest item taken now
    remaining = 0  # new items seen on the page where the bound stopped us
    for _ in range(MAX_PAGES):
        stopped = False
        for key, item in page.entries:
            if lowest is not None and key >= lowest:
                continue  # shifted by items that arrived since the first page
            if mark is not None and key <= mark:
                stopped = True  # reached what was taken before
                break
            if len(items) >= limit:
                stopped = True
                remaining += 1
                continue  # count what this page shows of the rest
            items.append(item)
            first = key if first is None else first
            lowest = key
        if remaining:
            break
        if stopped or (mark is None and len(items) >= limit):
            break
        if not page.has_more or page.next_cursor in (None, cursor):
            break
        cursor = page.next_cursor
        page = await read(cursor)
    if first is None or lowest is None:  # nothing new
        newest = progress.newest if mark is not None else 0
        had = progress.had if mark is not None else total
        return _Top([], newest, had, None)
    gap = None
    if remaining and mark is not None:
        if total is not None and progress.had is not None:
            left = max(total - len(items) - progress.had, remaining)
        else:
            left = remaining  # a lower bound: the site gives no total
        gap = Gap(below=mark, above=lowest, cursor=cursor, left=left)
    return _Top(items, first, total, gap)


async def _from_gap(
    gap: Gap, read: PageReader, budget: int
) -> tuple[list[CrawledItem], Gap | None]:
    """Take up to ``budget`` items of ``gap``, newest first; return them and what is
    left of the gap (None once paging found its end)."""
    cursor = gap.cursor
    page = await read(cursor)
    items: list[CrawledItem] = []
    above = gap.above
    for _ in range(MAX_PAGES):
        for key, item in page.entries:
            if key >= above:
                continue  # taken already (pages shift as items arrive)
            if key <= gap.below:
                return items, None
            if len(items) >= budget:
                rest = replace(gap, above=above, cursor=cursor, left=gap.left - len(items))
                return items, replace(rest, left=max(rest.left, 1))
            items.append(item)
            above = key
        if not page.has_more or page.next_cursor in (None, cursor):
            return items, None
        cursor = page.next_cursor
        page = await read(cursor)
    return items, replace(gap, above=above, cursor=cursor, left=max(gap.left - len(items), 1))


class Tracker:
    """Each account's progress per list, for one platform on one worker. A different
    ``platform_user_id`` is a different list: its progress starts again."""

    def __init__(self) -> None:
        self._lists: dict[tuple[str, str], tuple[str | None, Progress]] = {}

    def get(self, account_id: str, kind: str, user_id: str | None) -> Progress:
        owner, progress = self._lists.get((account_id, kind), (user_id, Progress()))
        return progress if owner == user_id else Progress()

    def put(self, account_id: str, kind: str, user_id: str | None, progress: Progress) -> None:
        self._lists[(account_id, kind)] = (user_id, progress)

    async def fetch(self, account: AccountConfig, kind: str, read: PageReader) -> Fetched:
        """Crawl one list of ``account`` (see the module's contract) and keep its progress."""
        user = account.platform_user_id
        fetched, after = await crawl(
            self.get(account.id, kind, user), read, account.max_items_per_crawl
        )
        self.put(account.id, kind, user, after)
        return fetched

    def forget(self, account_id: str) -> None:
        for key in [k for k in self._lists if k[0] == account_id]:
            del self._lists[key]
