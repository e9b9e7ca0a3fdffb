"""douyin's parsers against payloads of the real shape (tests/worker/fixtures/douyin,
written from the facts in douyin_api's docstring): both generations of the comment
lists, a second page, a reply list, an empty list, the works list, the chat page's
contacts and message props; and every way a response can be wrong, each a named task
error, never zero items."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hiscrm_worker.platforms.base import (
    PlatformChanged,
    PlatformError,
    PlatformRefused,
    SessionExpired,
)
from hiscrm_worker.platforms.comments import list_page
from hiscrm_worker.platforms.creator import DOUYIN
from hiscrm_worker.platforms.douyin_api import (
    address,
    parse_chat_messages,
    parse_comment_page,
    parse_contacts,
    parse_profile,
    parse_reply_page,
    parse_work_list,
)

FIXTURES = Path(__file__).parent / "fixtures" / "douyin"
CREATOR = "https://creator.douyin.com"
WORK = "7428000000000000001"
LIST = f"{CREATOR}/aweme/v1/creator/comment/list/?item_id={WORK}&cursor=0&count=10&msToken=SECRET"
PAGE2 = f"{CREATOR}/aweme/v1/creator/comment/list/?item_id={WORK}&cursor=2&count=10"
REPLIES = (
    f"{CREATOR}/aweme/v1/creator/comment/reply/list/"
    f"?item_id={WORK}&comment_id=7429255328484556877&cursor=0&count=10"
)
WEB = "https://www.douyin.com/aweme/v1/web/comment/list/select/?aweme_id={w}&cursor=0&count=20"
WEB_REPLIES = (
    "https://www.douyin.com/aweme/v1/web/comment/list/reply/"
    "?item_id={w}&comment_id=7429255328484556877&cursor=0&count=3"
)


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_a_comment_page_of_the_creator_centre() -> None:
    page = parse_comment_page(load("comment_list.json"), LIST, "秋天的第一杯奶茶")
    assert (page.cursor, page.has_more, page.total, page.work_id) == ("2", True, 3, WORK)
    (first, replies), (second, none) = page.comments
    assert (first.item_id, first.kind, first.text, first.author) == (
        "7429255328484556877",
        "comment",
        "请问有大码吗？",
        "小李",
    )
    # create_time is UTC epoch seconds as a string: no +8 h correction
    assert first.created_at == datetime(2024, 10, 24, 8, 25, tzinfo=UTC)
    assert (replies, none) == (2, 0)
    assert first.extra == {
        "work_id": WORK,
        "work_title": "秋天的第一杯奶茶",
        "level": 1,
        "user_id": "MS4wLjABAAAAq1w2e3r4t5y6u7i8o9p0aAsSdDfFgGhHjJ",
        "digg_count": 0,
        "reply_count": 2,
        "is_author": False,
    }
    assert second.extra["digg_count"] == 12
    assert "reply_to" not in first.extra  # an empty reply_to_user_info is no one
    # ids grow with the posting second: they order the list for paging
    keys = [k for k, _ in list_page(page, DOUYIN, LIST).entries]
    assert keys == sorted(keys, reverse=True) and keys[0] >> 32 == 1729758300


def test_the_second_page_and_an_empty_list() -> None:
    page = parse_comment_page(load("comment_list_page2.json"), PAGE2)
    assert [c.item_id for c, _ in page.comments] == ["7429248886157069589"]
    assert (page.cursor, page.has_more) == ("3", False)
    empty = parse_comment_page(load("comment_list_empty.json"), LIST)
    assert (empty.comments, empty.has_more, empty.total) == ((), False, 0)


def test_a_reply_list_names_its_parent_from_the_address() -> None:
    page = parse_reply_page(load("reply_list.json"), REPLIES, "秋天的第一杯奶茶")
    assert page.parent_id == "7429255328484556877"
    (owner, _), (fan, _) = page.comments
    assert owner.extra["parent_id"] == "7429255328484556877"
    assert owner.extra["level"] == 2 and owner.extra["is_author"] is True
    assert owner.extra["reply_to"] == "小李" and fan.extra["reply_to"] == "店主"
    assert owner.extra["work_id"] == WORK


def test_the_web_generation_of_both_lists() -> None:
    page = parse_comment_page(load("web_comment_list.json"), WEB.format(w=WORK))
    ((item, replies),) = page.comments
    assert (item.item_id, item.author, replies, page.has_more, page.total) == (
        "7429255328484556877",
        "小李",
        2,
        True,
        3,
    )
    assert item.extra["user_id"] == "3045678901234567"
    assert item.extra["sec_uid"].startswith("MS4wLjABAAAA")
    assert item.created_at == datetime(2024, 10, 24, 8, 25, tzinfo=UTC)
    # without aweme_id in the address, the items' own aweme_id names the work
    bare = parse_comment_page(load("web_comment_list.json"), WEB.format(w=""))
    assert bare.work_id == WORK
    replies_page = parse_reply_page(load("web_reply_list.json"), WEB_REPLIES.format(w=WORK))
    ((reply, _),) = replies_page.comments
    assert reply.extra["parent_id"] == "7429255328484556877"
    assert reply.extra["is_author"] is True and reply.extra["level"] == 2


def test_the_works_list() -> None:
    url = f"{CREATOR}/aweme/v1/creator/item/list/?cursor=0&count=10"
    page = parse_work_list(load("work_list.json"), url)
    assert [(w.title, w.comment_count) for w in page.works] == [
        ("秋天的第一杯奶茶", 3),
        ("开箱：新到的秋冬外套", 0),
        ("", None),
    ]
    assert page.works[0].item_id.startswith("@jPRpB")
    assert (page.cursor, page.has_more) == ("1729500000000", True)


def test_contacts_and_messages_of_the_chat_page() -> None:
    url = f"{CREATOR}/aweme/v1/creator/im/user_detail/"
    contacts = parse_contacts(load("user_detail.json"), url)
    assert [(c.user_id, c.nickname, c.short_id) for c in contacts] == [
        ("3045678901234567", "小李", "2468013579"),
        ("3045678901230001", "阿珍", "1357924680"),
    ]
    assert contacts[0].sec_uid.startswith("MS4wLjABAAAA")
    names = {c.user_id: c.nickname for c in contacts} | {"1864722759": "店主"}
    items = parse_chat_messages(load("chat_messages.json"), "chat", names, "1864722759")
    # the follow notice (aweType 701) is not a message
    assert [(i.item_id, i.text, i.author, i.extra["direction"]) for i in items] == [
        ("7429254039994372242", "在吗？想问下价格", "小李", "in"),
        ("7429255328484556999", "在的，99 元包邮", "店主", "out"),
    ]
    assert items[0].extra["conversation_id"] == "0:1:1864722759:3045678901234567"
    assert items[0].extra["sender_id"] == "3045678901234567"
    assert items[0].created_at == datetime(2024, 10, 24, 8, 20, 0, 123000, tzinfo=UTC)


def test_identity_records_uid_sec_uid_and_unique_id() -> None:
    uid, info = parse_profile(load("profile_self.json"))
    assert uid == "1864722759"  # stable: the platform_user_id
    assert info["uid"] == uid
    assert info["sec_uid"] == "MS4wLjABAAAAx1y2z3"
    assert info["unique_id"] == "shop_owner_88"  # the 抖音号 people see; it can change
    with pytest.raises(PlatformChanged, match=r"'user' lacks 'uid'"):
        parse_profile(load("profile_self_no_uid.json"))


# drift: a named task error, never zero items


def test_a_drifted_envelope_names_the_address_and_the_missing_keys() -> None:
    with pytest.raises(PlatformChanged) as caught:
        parse_comment_page(load("comment_list_drifted.json"), LIST)
    text = str(caught.value)
    assert text.startswith("platform_changed: https://creator.douyin.com/aweme/v1/creator/")
    assert "lacks 'comment_info_list', 'cursor', 'has_more'" in text
    assert "msToken" not in text and "SECRET" not in text  # no page tokens in errors
    assert f"item_id={WORK}" in text


@pytest.mark.parametrize(
    ("fixture", "parse", "url", "message"),
    [
        ("comment_list_drifted_item.json", parse_comment_page, LIST, "a comment lacks 'user_info'"),
        ("comment_list_bad_time.json", parse_comment_page, LIST, "'yesterday', not an epoch"),
        ("web_comment_list.json", parse_comment_page, LIST, "lacks 'comment_info_list'"),
        ("comment_list.json", parse_comment_page, WEB.format(w=WORK), "lacks 'comments'"),
        ("comment_list.json", parse_reply_page, LIST, "not an address of a comment list"),
        ("reply_list.json", parse_reply_page, REPLIES.replace("comment_id", "x"), "no parent"),
        ("user_detail_drifted.json", parse_contacts, "/im/user_detail/", "lacks 'user_list'"),
        ("work_list.json", parse_contacts, "/im/user_detail/", "lacks 'user_list'"),
        ("user_detail.json", parse_work_list, "/item/list/", "lacks 'item_info_list'"),
    ],
)
def test_every_parser_checks_its_shape(fixture: str, parse: Any, url: str, message: str) -> None:
    with pytest.raises(PlatformChanged, match=message):
        parse(load(fixture), url)


def test_drifted_message_props_name_the_missing_keys() -> None:
    with pytest.raises(PlatformChanged, match="a message lacks 'serverId', 'sender', 'content'"):
        parse_chat_messages(load("chat_messages_drifted.json"), "chat page", {}, None)


def test_an_error_status_is_a_platform_error_and_not_logged_in_an_expiry() -> None:
    with pytest.raises(PlatformRefused) as caught:
        parse_comment_page(load("comment_list_error.json"), LIST)
    assert str(caught.value).startswith("platform_error: https://creator.douyin.com/")
    assert "status_code 2053 (服务暂不可用，请稍后再试)" in str(caught.value)
    with pytest.raises(SessionExpired, match=r"status_code 8 \(用户未登录\)"):
        parse_comment_page(load("comment_list_not_logged_in.json"), LIST)


@pytest.mark.parametrize("doc", [None, [], "oops", 42])
def test_non_object_responses_are_a_platform_change(doc: Any) -> None:
    for parse in (parse_comment_page, parse_contacts, parse_work_list):
        with pytest.raises(PlatformChanged, match=r"the response is .*not an object"):
            parse(doc, LIST)


def test_messages_are_bounded_for_the_task_error_field() -> None:
    huge = {"status_code": 0, **{f"key{i}" * 50: i for i in range(100)}}
    with pytest.raises(PlatformError) as caught:
        parse_comment_page(huge, LIST)
    assert len(str(caught.value)) <= 1500


def test_addresses_keep_only_what_names_the_list() -> None:
    assert address(LIST) == (
        f"https://creator.douyin.com/aweme/v1/creator/comment/list/?item_id={WORK}&cursor=0&count=10"
    )
