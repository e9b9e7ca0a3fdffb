"""douyin's parsers against payloads of the real shape, good and bad."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hiscrm_worker.platforms import PlatformError
from hiscrm_worker.platforms.douyin_api import (
    parse_comment_list,
    parse_message_list,
    parse_profile,
)

FIXTURES = Path(__file__).parent / "fixtures" / "douyin"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def test_comment_list() -> None:
    items = parse_comment_list(load("comment_list.json"))
    assert [i.item_id for i in items] == ["7431234567890123456", "7431234567890129999"]
    first, reply = items
    assert first.kind == "comment"
    assert first.text == "这个视频太好看了"
    assert first.author == "小李"
    assert first.created_at == datetime(2024, 10, 24, 8, 0, tzinfo=UTC)
    assert first.extra["digg_count"] == 12 and first.extra["reply_count"] == 1
    assert first.extra["user_id"] == "3045678901234567"
    assert reply.extra["is_author"] is True and reply.extra["reply_to"] == "小李"


def test_empty_comment_list_is_no_items() -> None:
    assert parse_comment_list(load("comment_list_empty.json")) == []


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("comment_list_not_logged_in.json", "status_code 8 (用户未登录)"),
        ("comment_list_malformed.json", "'comments' is not a list"),
        ("comment_list_missing_id.json", "no comment_id"),
        ("comment_list_bad_time.json", "bad time 'yesterday'"),
    ],
)
def test_bad_comment_lists_are_a_clear_task_error(fixture: str, message: str) -> None:
    with pytest.raises(PlatformError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_comment_list(load(fixture))


@pytest.mark.parametrize("doc", [None, [], "oops", 42])
def test_non_object_responses_are_a_clear_task_error(doc: Any) -> None:
    with pytest.raises(PlatformError, match="not a JSON object"):
        parse_comment_list(doc)
    with pytest.raises(PlatformError, match="not a JSON object"):
        parse_message_list(doc)


def test_profile_gives_the_stable_uid_not_the_changeable_unique_id() -> None:
    uid, info = parse_profile(load("profile_self.json"))
    assert uid == "1864722759"
    assert info["sec_uid"] == "MS4wLjABAAAAx1y2z3"
    assert info["unique_id"] == "shop_owner_88"
    with pytest.raises(PlatformError, match=r"no user\.uid"):
        parse_profile(load("profile_self_no_uid.json"))


def test_message_list() -> None:
    items = parse_message_list(load("message_list.json"))
    assert [(i.kind, i.item_id, i.text) for i in items] == [
        ("dm", "7431999900001111", "在吗？想问下价格"),
        ("dm", "7431999900002222", "plain text message"),
    ]
    assert items[0].author == "小李"
    assert items[0].created_at.year == 2024  # milliseconds understood
