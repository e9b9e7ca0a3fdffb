"""The douyin walkers offline, in real Chromium (issue 12): the sandbox site serves the
creator centre's pages and responses, and the sandbox platform walks them with the code
that walks douyin's. Works through the picker, every work's comments page by page with
their replies, DMs read from component props, and a site change reported as
``platform_changed`` by the first crawl that meets it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import CrawledItem
from hiscrm_sandbox.site import SandboxServer
from hiscrm_sandbox.state import SiteState
from hiscrm_worker.platforms.base import Fetched
from hiscrm_worker.platforms.sandbox import SandboxPlatform
from hiscrm_worker.task import MonitorTask
from tests.browser.inprocess import logged_in

USER = "1864722759"


async def _logged_in(site: SandboxServer, platform: SandboxPlatform, limit: int) -> AccountConfig:
    account = AccountConfig(id="acc-1", platform="sandbox", max_items_per_crawl=limit)
    return await logged_in(site, platform, account, USER, "店主")


def _post_works(state: SiteState) -> dict[str, dict[str, Any]]:
    """3 works of 25 comments each; some comments with replies (one with 12: two reply
    pages). What was posted, by comment id: its work and parent."""
    posted: dict[str, dict[str, Any]] = {}
    for n in range(1, 4):
        work = state.add_work(USER, f"作品 {n}")
        texts = [f"作品{n} 评论{i}" for i in range(1, 26)]
        for c in state.add_items("comments", USER, texts, f"粉丝{n}", work_id=work["item_id"]):
            posted[c["id"]] = {"work": work["item_id"], "title": work["title"], "parent": None}
        comments = [cid for cid, p in posted.items() if p["work"] == work["item_id"]]
        for k, parent in enumerate(comments[::6]):  # 5 comments per work, 1 to 12 replies
            count = 12 if k == 0 else k
            texts = [f"回复 {parent} #{j}" for j in range(count)]
            for r in state.add_items("comments", USER, texts, "店主", reply_to=parent):
                posted[r["id"]] = {
                    "work": work["item_id"],
                    "title": work["title"],
                    "parent": parent,
                }
    return posted


def _check(items: list[CrawledItem], posted: dict[str, dict[str, Any]]) -> None:
    """Every posted comment and reply taken exactly once, with its work and parent."""
    ids = [i.item_id for i in items]
    assert len(ids) == len(set(ids)), "an item was taken twice"
    assert set(ids) == set(posted)
    for item in items:
        want = posted[item.item_id]
        assert item.extra["work_id"] == want["work"]
        assert item.extra["work_title"] == want["title"]
        assert item.extra.get("parent_id") == want["parent"]
        assert item.extra["level"] == (1 if want["parent"] is None else 2)


async def _drain(platform: SandboxPlatform, account: AccountConfig) -> list[CrawledItem]:
    """Crawl until a crawl finds nothing and leaves nothing."""
    taken: list[CrawledItem] = []
    for _ in range(100):
        got = await platform.fetch_comments(account)
        assert len(got) <= account.max_items_per_crawl
        taken += got.items
        if not got.items and not got.left:
            return taken
    raise AssertionError("the crawls never caught up")


async def test_three_works_of_25_comments_with_replies_are_taken_whole_and_once(
    site: SandboxServer, platform: SandboxPlatform
) -> None:
    account = await _logged_in(site, platform, 1000)
    assert list(await platform.fetch_comments(account)) == []  # the first walk: nothing yet
    posted = _post_works(site.state)
    assert (
        len(posted) == 3 * (25 + 12 + 1 + 2 + 3 + 4)
        and sum(p["parent"] is None for p in posted.values()) == 75
    )
    got = await platform.fetch_comments(account)
    assert got.left == 0
    _check(list(got), posted)
    # newest first within a work's comments; replies name their parent
    by_work = [
        i.item_id for i in got if i.extra["work_title"] == "作品 3" and i.extra["level"] == 1
    ]
    assert by_work == sorted(by_work, key=lambda i: -int(i[1:]))
    assert list(await platform.fetch_comments(account)) == []  # nothing twice

    # a new reply to a comment already taken, and a new comment, come in the next crawl
    newest = by_work[0]
    reply = site.state.add_item("comments", USER, "后来的回复", "粉丝9", reply_to=newest)
    comment = site.state.add_item("comments", USER, "后来的评论", "粉丝9")
    got = await platform.fetch_comments(account)
    assert sorted(i.item_id for i in got) == sorted([reply["id"], comment["id"]])
    (late,) = [i for i in got if i.item_id == reply["id"]]
    assert late.extra["parent_id"] == newest


async def test_a_small_bound_takes_them_over_several_crawls_each_once(
    site: SandboxServer, platform: SandboxPlatform
) -> None:
    account = await _logged_in(site, platform, 7)
    assert list(await platform.fetch_comments(account)) == []
    posted = _post_works(site.state)
    first = await platform.fetch_comments(account)
    assert len(first) == 7 and first.left > 0
    taken = list(first) + await _drain(platform, account)
    _check(taken, posted)


async def test_the_web_generation_of_the_comment_api_is_walked_the_same(
    site: SandboxServer, platform: SandboxPlatform
) -> None:
    site.state.generation = "web"
    account = await _logged_in(site, platform, 1000)
    assert list(await platform.fetch_comments(account)) == []
    posted = _post_works(site.state)
    _check(await _drain(platform, account), posted)


async def test_five_dms_in_two_conversations_are_read_from_component_props(
    site: SandboxServer, platform: SandboxPlatform
) -> None:
    account = await _logged_in(site, platform, 1000)
    assert list(await platform.fetch_dms(account)) == []
    alice = site.state.add_items("dms", USER, ["在吗", "想问下价格", "还有货吗"], "小李")
    bob = site.state.add_items("dms", USER, ["你好", "发货了吗"], "阿珍")
    got = await platform.fetch_dms(account)
    assert got.left == 0
    assert [(i.item_id, i.text, i.author) for i in got] == [
        # the latest conversation first, each newest first
        (bob[1]["id"], "发货了吗", "阿珍"),
        (bob[0]["id"], "你好", "阿珍"),
        (alice[2]["id"], "还有货吗", "小李"),
        (alice[1]["id"], "想问下价格", "小李"),
        (alice[0]["id"], "在吗", "小李"),
    ]
    conversations = {i.extra["conversation_id"] for i in got}
    assert len(conversations) == 2
    assert all(c.startswith("0:1:") and USER in c for c in conversations)
    assert {i.extra["sender_id"] for i in got} == {alice[0]["author_id"], bob[0]["author_id"]}
    assert all(i.extra["direction"] == "in" for i in got)
    assert list(await platform.fetch_dms(account)) == []  # de-duplicated by serverId
    more = site.state.add_item("dms", USER, "在线等", "小李")
    assert [i.item_id for i in await platform.fetch_dms(account)] == [more["id"]]


async def test_a_long_conversation_is_scrolled_up_to_what_was_taken(
    site: SandboxServer, platform: SandboxPlatform
) -> None:
    account = await _logged_in(site, platform, 30)
    site.state.add_items("dms", USER, [f"旧 {i}" for i in range(50)], "小李")
    first = await platform.fetch_dms(account)  # the first walk: the newest 30; the rest is history
    assert [i.text for i in first] == [f"旧 {i}" for i in range(49, 19, -1)] and first.left == 0
    new = site.state.add_items("dms", USER, [f"新 {i}" for i in range(45)], "小李")
    got = await platform.fetch_dms(account)  # 45 new, 20 a page: scrolled up for more
    assert [i.item_id for i in got] == [m["id"] for m in reversed(new)][:30]
    assert 0 < got.left <= 15  # what it saw of the rest: it stops once it has enough
    got = await platform.fetch_dms(account)
    assert [i.item_id for i in got] == [m["id"] for m in reversed(new)][30:]
    assert got.left == 0
    assert list(await platform.fetch_dms(account)) == []


async def _crawl_once(task: MonitorTask, done: anyio.Event) -> None:
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(task.run)
            await done.wait()
            tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("what", "mode", "prefix", "named"),
    [
        ("comments", "shape", "platform_changed: ", "lacks 'comment_info_list'"),
        ("works", "shape", "platform_changed: ", "lacks 'item_info_list'"),
        ("replies", "shape", "platform_changed: ", "lacks 'comment_info_list'"),
        ("contacts", "shape", "platform_changed: ", "lacks 'user_list'"),
        ("comments", "error", "platform_error: ", "status_code 2053"),
    ],
)
async def test_a_site_change_is_the_task_error_of_the_first_crawl_that_meets_it(
    site: SandboxServer, platform: SandboxPlatform, what: str, mode: Any, prefix: str, named: str
) -> None:
    account = await _logged_in(site, platform, 1000)
    site.state.add_item("comments", USER, "好看", "粉丝")
    site.state.add_item("comments", USER, "谢谢", "店主", reply_to="c1")
    site.state.add_item("dms", USER, "在吗", "粉丝")
    site.state.drift[what] = mode
    errors: list[str | None] = []
    done = anyio.Event()

    def on_state(task: MonitorTask) -> None:
        if task.state in ("error", "running"):
            errors.append(task.error)
            done.set()

    task = MonitorTask(account.model_copy(update={"monitor_interval_s": 3600}), platform, on_state)
    await _crawl_once(task, done)
    (error,) = errors
    assert error is not None and error.startswith(prefix), error
    assert named in error
    assert site.base_url in error  # the address
    assert task.crawls == 0  # never read as "no new items"

    # once the site is back, the list that failed gives what it had: nothing was lost
    del site.state.drift[what]
    if what == "contacts":
        assert [i.item_id for i in await platform.fetch_dms(account)] == ["d3"]
    else:
        fetched: Fetched = await platform.fetch_comments(account)
        assert {i.item_id for i in fetched} == {"c1", "c2"}
