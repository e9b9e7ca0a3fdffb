"""Crawls page back to what they already took (issue 15, finding 5), against the sandbox
site's own lists in-process: the body its creator centre serves for a work's comments
(douyin's envelope), read by douyin's parser, keyed as the comment walker keys it and
paged by the tracker. No browser, no sockets."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiscrm_bus.accounts import AccountConfig
from hiscrm_sandbox.creator import comment_list
from hiscrm_sandbox.site import list_response
from hiscrm_sandbox.state import SiteState
from hiscrm_worker.platforms.base import Fetched, PlatformChanged, PlatformError
from hiscrm_worker.platforms.comments import list_page
from hiscrm_worker.platforms.douyin_api import COMMENT_LIST_PATHS, parse_comment_page
from hiscrm_worker.platforms.paging import ListPage, PageReader, Tracker
from hiscrm_worker.platforms.sandbox import sandbox_site

USER = "42"
SITE = sandbox_site("http://127.0.0.1:8765")


def work_page(
    state: SiteState, user: str, cursor: int, count: int, totals: bool = True
) -> ListPage:
    """The first work's comment page at ``cursor``, as the comment walker reads it."""
    work = state.work_list(user)[0]["item_id"]
    doc = comment_list(state, user, work, cursor, count)
    if not totals:
        del doc["total_count"]
    url = SITE.url(f"{COMMENT_LIST_PATHS[0]}?item_id={work}&cursor={cursor}&count={count}")
    return list_page(parse_comment_page(doc, url), SITE, url)


class Site:
    """The sandbox site's comment list for one user, and a crawler of it."""

    def __init__(self, page_size: int = 50, totals: bool = True) -> None:
        self.state = SiteState()
        self.page_size = page_size
        self.totals = totals
        self.reads: list[str | None] = []
        self.before_read: Callable[[int], None] | None = None  # (reads so far) -> None
        self.tracker = Tracker()

    def post(self, n: int, text: str = "c") -> list[str]:
        return [i["id"] for i in self.state.add_items("comments", USER, [text] * n, "fan")]

    def reader(self) -> PageReader:
        async def read(cursor: str | None) -> ListPage:
            if self.before_read is not None:
                self.before_read(len(self.reads))
            self.reads.append(cursor)
            return work_page(self.state, USER, int(cursor or 0), self.page_size, self.totals)

        return read

    async def crawl(self, limit: int, user: str = USER) -> Fetched:
        self.reads = []
        account = AccountConfig(
            id="acc-1", platform="sandbox", platform_user_id=user, max_items_per_crawl=limit
        )
        return await self.tracker.fetch(account, "comments", self.reader())


def ids(fetched: Fetched) -> list[str]:
    return [i.item_id for i in fetched]


def newest_first(posted: list[str]) -> list[str]:
    return list(reversed(posted))


async def test_the_first_page_is_served_as_before_with_a_cursor_to_the_next() -> None:
    state = SiteState()
    state.add_items("comments", USER, [f"t{i}" for i in range(120)], "fan")
    doc = list_response(state, "comments", USER)
    assert [c["text"] for c in doc["comments"]] == [f"t{i}" for i in range(119, 69, -1)]
    assert (doc["cursor"], doc["has_more"], doc["total_count"]) == (50, True, 120)
    last = list_response(state, "comments", USER, cursor=100)
    assert [c["text"] for c in last["comments"]] == [f"t{i}" for i in range(19, -1, -1)]
    assert (last["cursor"], last["has_more"]) == (120, False)
    assert state.list_items("comments", USER, 3) == doc["comments"][:3]


async def test_a_burst_of_many_pages_is_taken_whole_newest_first_and_once() -> None:
    site = Site()
    assert ids(await site.crawl(1000)) == []  # the list was empty
    burst = site.post(1010)
    got = await site.crawl(1000)
    assert ids(got) == newest_first(burst)[:1000]
    assert got.left == 10
    assert site.reads == [None, *[str(n) for n in range(50, 1001, 50)]]  # 21 pages
    got = await site.crawl(1000)
    assert ids(got) == newest_first(burst)[1000:]  # the 10 left, resumed at their page
    assert got.left == 0
    assert site.reads == [None, "1000"]
    got = await site.crawl(1000)
    assert ids(got) == [] and got.left == 0
    assert site.reads == [None]  # one page shows nothing is new


async def test_everything_new_is_taken_when_the_bound_allows() -> None:
    site = Site()
    await site.crawl(1000)
    burst = site.post(990)
    got = await site.crawl(1000)
    assert ids(got) == newest_first(burst)
    assert got.left == 0
    more = site.post(3)
    assert ids(await site.crawl(1000)) == newest_first(more)


async def test_a_small_bound_leaves_items_that_later_crawls_take_newest_first() -> None:
    site = Site()
    await site.crawl(100)
    burst = newest_first(site.post(1010))
    lefts, taken = [], []
    for _ in range(11):
        got = await site.crawl(100)
        assert len(got) <= 100
        lefts.append(got.left)
        taken += ids(got)
    assert lefts == [910, 810, 710, 610, 510, 410, 310, 210, 110, 10, 0]
    assert taken == burst  # every item once, newest first throughout
    got = await site.crawl(100)
    assert ids(got) == [] and got.left == 0


async def test_new_items_come_first_then_the_gaps_newest_gap_first() -> None:
    site = Site(page_size=20)
    await site.crawl(100)
    first = newest_first(site.post(300))
    got = await site.crawl(100)
    assert ids(got) == first[:100] and got.left == 200
    second = newest_first(site.post(250))
    got = await site.crawl(100)
    assert ids(got) == second[:100]
    assert got.left == 350  # 150 of the second burst and 200 of the first
    later = newest_first(site.post(30))
    got = await site.crawl(100)
    # what arrived since comes first, then the newer gap (the second burst's)
    assert ids(got) == later + second[100:170] and got.left == 280
    got = await site.crawl(100)
    assert ids(got) == second[170:250] + first[100:120] and got.left == 180
    rest: list[str] = []
    while got.left:
        got = await site.crawl(100)
        rest += ids(got)
    assert rest == first[120:]


async def test_items_arriving_between_two_pages_are_neither_lost_nor_repeated() -> None:
    site = Site(page_size=10)
    await site.crawl(1000)
    burst = newest_first(site.post(45))
    arrived: list[str] = []

    def arrive(reads: int) -> None:
        if reads in (1, 3):  # after the first and the third page
            arrived.extend(newest_first(site.post(7, "late")))

    site.before_read = arrive
    got = await site.crawl(1000)
    assert ids(got) == burst  # the shifted pages repeated 7 and 14 items: skipped
    assert got.left == 0
    site.before_read = None
    assert ids(await site.crawl(1000)) == arrived[7:] + arrived[:7]


async def test_items_arriving_while_a_gap_waits_do_not_shift_it_out() -> None:
    site = Site(page_size=10)
    await site.crawl(25)
    burst = newest_first(site.post(60))
    assert ids(await site.crawl(25)) == burst[:25]
    late = newest_first(site.post(33))  # moves the gap's offset cursor by 33
    got = await site.crawl(25)
    assert ids(got) == late[:25] and got.left == 35 + 8
    got = await site.crawl(25)
    assert ids(got) == late[25:] + burst[25:42] and got.left == 18
    got = await site.crawl(25)
    assert ids(got) == burst[42:] and got.left == 0


async def test_a_failed_page_read_changes_nothing() -> None:
    site = Site(page_size=10)
    await site.crawl(100)
    burst = newest_first(site.post(35))

    def fail(reads: int) -> None:
        if reads == 2:
            raise PlatformError("page 3 did not load")

    site.before_read = fail
    with pytest.raises(PlatformError):
        await site.crawl(100)
    site.before_read = None
    assert ids(await site.crawl(100)) == burst  # nothing was marked taken


async def test_the_first_crawl_takes_the_newest_items_and_leaves_no_backlog() -> None:
    site = Site()
    history = newest_first(site.post(500))
    got = await site.crawl(100)
    assert ids(got) == history[:100]
    assert got.left == 0  # history before this worker's first crawl is not a backlog
    assert site.reads == [None, "50"]  # and is not read further than the bound
    assert ids(await site.crawl(100)) == []


async def test_without_a_total_left_is_a_lower_bound_and_it_still_converges() -> None:
    site = Site(page_size=10, totals=False)
    await site.crawl(20)
    burst = newest_first(site.post(75))
    taken: list[str] = []
    while True:
        got = await site.crawl(20)
        taken += ids(got)
        if not got.left:
            break
        assert 1 <= got.left <= 75 - len(taken)
    assert taken == burst


async def test_another_user_is_another_list() -> None:
    site = Site()
    await site.crawl(100)
    site.post(5)
    assert len(await site.crawl(100)) == 5
    # the same account logged in as someone else: its list starts again
    site.state.add_items("comments", "7", ["x"] * 3, "fan")
    site.reads = []
    account = AccountConfig(id="acc-1", platform="sandbox", platform_user_id="7")

    async def read(cursor: str | None) -> ListPage:
        return work_page(site.state, "7", int(cursor or 0), 50)

    assert len(await site.tracker.fetch(account, "comments", read)) == 3


def test_a_drifted_or_malformed_page_is_a_platform_change() -> None:
    state = SiteState()
    state.add_items("comments", USER, ["x"], "fan")
    state.drift["comments"] = "shape"
    with pytest.raises(PlatformChanged, match=r"platform_changed: .* lacks 'comment_info_list'"):
        work_page(state, USER, 0, 10)
    del state.drift["comments"]
    work = state.work_list(USER)[0]["item_id"]
    doc = comment_list(state, USER, work, 0, 10)
    doc["comment_info_list"][0]["comment_id"] = "7x"  # not an id the site orders by
    url = SITE.url(f"{COMMENT_LIST_PATHS[0]}?item_id={work}&cursor=0")
    with pytest.raises(PlatformChanged, match="the id '7x' does not order the list"):
        list_page(parse_comment_page(doc, url), SITE, url)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    page_size=st.integers(1, 12),
    limit=st.integers(1, 30),
    # each step: items posted before the crawl, and items posted after its n-th read
    steps=st.lists(
        st.tuples(st.integers(0, 60), st.integers(0, 5), st.integers(0, 8)),
        min_size=1,
        max_size=12,
    ),
)
async def test_every_item_is_taken_once_within_the_bound_with_an_exact_count_left(
    page_size: int, limit: int, steps: list[tuple[int, int, int]]
) -> None:
    site = Site(page_size=page_size)
    await site.crawl(limit)  # the first crawl: an empty list
    posted: list[str] = []
    taken: list[str] = []

    async def crawl() -> Fetched:
        got = await site.crawl(limit)
        assert len(got) <= limit
        taken.extend(ids(got))
        assert len(taken) == len(set(taken))  # never twice
        return got

    for before, at_read, during in steps:
        posted.extend(site.post(before))

        def arrive(reads: int, at_read: int = at_read, during: int = during) -> None:
            if reads == at_read:
                posted.extend(site.post(during, "late"))

        site.before_read = arrive
        ready = len(posted)
        got = await crawl()
        site.before_read = None
        # exactly the items posted before the crawl's first page and not taken yet
        seen_first = posted if at_read == 0 else posted[:ready]
        assert got.left == len(set(seen_first) - set(taken))
    for _ in range(len(posted) // limit + 2):  # then the backlog drains
        await crawl()
    assert sorted(taken) == sorted(posted)
