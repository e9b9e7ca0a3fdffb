"""The sandbox site over HTTP, in-process: its lists page like the creator centre's
(``cursor`` / ``has_more`` / ``total_count``), bursts posted in one request and
``hiscrm sandbox post-comment --count``; its creator centre in douyin's envelopes (works,
comments, replies, contacts, binary message history), switched to the web generation
or drifted on demand; ``post-work``, ``post-reply`` and ``drift``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from hiscrm_sandbox.site import COOKIE, SandboxServer, serve


@pytest.fixture
def site() -> Iterator[SandboxServer]:
    server = serve("127.0.0.1", 0, 60, 3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _session(site: SandboxServer, user_id: str = "42") -> str:
    site.state.new_qr()
    login = site.state.scan(user_id, "fan", None, confirm=True)
    assert login is not None and login.session_id
    return login.session_id


def _call(
    site: SandboxServer, path: str, body: dict[str, Any] | None = None, session: str = ""
) -> tuple[int, Any]:
    request = urllib.request.Request(
        site.base_url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Cookie": f"{COOKIE}={session}"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_lists_come_a_page_at_a_time_newest_first(site: SandboxServer) -> None:
    session = _session(site)
    status, doc = _call(site, "/api/comments", {"user_id": "42", "text": "hi", "count": 1010})
    assert status == 201
    assert (doc["count"], doc["first"], doc["last"]) == (1010, "c1", "c1010")

    status, first = _call(site, "/api/comments", session=session)
    assert status == 200
    assert [c["text"] for c in first["comments"]] == [f"hi {n}" for n in range(1010, 960, -1)]
    assert (first["cursor"], first["has_more"], first["total_count"]) == (50, True, 1010)
    texts = []
    cursor: Any = 0
    while True:
        status, page = _call(site, f"/api/comments?cursor={cursor}", session=session)
        texts += [c["text"] for c in page["comments"]]
        if not page["has_more"]:
            break
        cursor = page["cursor"]
    assert texts == [f"hi {n}" for n in range(1010, 0, -1)]  # 21 pages, each item once
    _, small = _call(site, "/api/comments?limit=7&cursor=1000", session=session)
    assert [c["id"] for c in small["comments"]] == [f"c{n}" for n in range(10, 3, -1)]
    # another user's list, and the DMs, are their own
    _, dms = _call(site, "/api/dms", session=session)
    assert (dms["dms"], dms["has_more"], dms["total_count"]) == ([], False, 0)
    _, other = _call(site, "/api/comments", session=_session(site, "7"))
    assert other["total_count"] == 0


def test_bad_paging_arguments_and_bursts_are_refused(site: SandboxServer) -> None:
    session = _session(site)
    for query in ("cursor=abc", "cursor=-1", "limit=0", "limit=5000"):
        status, doc = _call(site, f"/api/comments?{query}", session=session)
        assert status == 400, query
        assert doc["status_code"] != 0
    for count in (0, -3, "5", True, 10**6):
        status, doc = _call(site, "/api/dms", {"user_id": "42", "text": "x", "count": count})
        assert status == 400, count
    assert _call(site, "/api/comments")[0] == 401  # not logged in
    assert site.state.items == {}


def _hiscrm(site: SandboxServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hiscrm_cli", "sandbox", *args, "--url", site.base_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_post_comment_and_send_dm_post_a_burst_with_count(site: SandboxServer) -> None:
    result = _hiscrm(site, "post-comment", "wow", "--user-id", "42", "--count", "1010")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1010 comments (c1 … c1010) posted"
    result = _hiscrm(site, "post-comment", "one", "--user-id", "42")
    assert result.stdout.strip() == "comment c1011 posted"
    result = _hiscrm(site, "send-dm", "hey", "--user-id", "42", "--count", "2")
    assert result.stdout.strip() == "2 messages (d1012 … d1013) sent"
    items = site.state.items[("comments", "42")]
    assert [i["text"] for i in items[:2]] == ["wow 1", "wow 2"]
    assert len(items) == 1011
    assert _hiscrm(site, "post-comment", "x", "--user-id", "42", "--count", "0").returncode == 2


# the creator centre it serves: douyin's envelopes and field types


def test_works_comments_and_replies_come_in_douyin_envelopes(site: SandboxServer) -> None:
    session = _session(site)
    _, work = _call(site, "/api/works", {"user_id": "42", "title": "新品开箱"})
    assert work["item_id"] == "w2"  # w1 is the first work, made when needed
    for n in range(25):
        _call(site, "/api/comments", {"user_id": "42", "text": f"评论{n}", "work_id": "w2"})
    status, reply = _call(
        site, "/api/comments", {"user_id": "42", "text": "回复", "reply_to": "c1"}
    )
    assert status == 201 and (reply["parent_id"], reply["work_id"]) == ("c1", "w2")

    _, works = _call(site, "/aweme/v1/creator/item/list/?cursor=0&count=10", session=session)
    assert [(w["item_id"], w["comment_count"]) for w in works["item_info_list"]] == [
        ("w2", 25),
        ("w1", 0),
    ]
    _, page = _call(
        site, "/aweme/v1/creator/comment/list/?item_id=w2&cursor=0&count=20", session=session
    )
    assert (page["status_code"], page["cursor"], page["has_more"], page["total_count"]) == (
        0,
        20,
        True,
        25,
    )
    assert isinstance(page["extra"]["now"], int)
    oldest = page["comment_info_list"][-1]
    assert isinstance(oldest["create_time"], str) and isinstance(oldest["digg_count"], str)
    first = next(c for c in page["comment_info_list"] if c["comment_id"] == "c25")
    assert first["level"] == 1 and first["reply_to_user_info"]["screen_name"] == ""
    assert first["user_info"]["user_id"].startswith("MS4wLjABAAAA")
    _, second = _call(
        site, "/aweme/v1/creator/comment/list/?item_id=w2&cursor=20&count=20", session=session
    )
    assert [c["comment_id"] for c in second["comment_info_list"]][-1] == "c1"
    assert second["comment_info_list"][-1]["reply_count"] == "1"
    _, replies = _call(
        site,
        "/aweme/v1/creator/comment/reply/list/?item_id=w2&comment_id=c1&cursor=0&count=10",
        session=session,
    )
    ((r,),) = [replies["comment_info_list"]]
    assert (r["comment_id"], r["level"], r["reply_to_user_info"]["screen_name"]) == (
        "c26",
        2,
        "fan",
    )
    # not logged in: douyin's answer, status_code 8
    assert _call(site, "/aweme/v1/creator/item/list/") == (
        200,
        {"status_code": 8, "status_msg": "用户未登录"},
    )


def test_the_web_generation_and_drift_are_switched_on_the_site(site: SandboxServer) -> None:
    session = _session(site)
    _call(site, "/api/comments", {"user_id": "42", "text": "hi"})
    assert _call(site, "/api/drift", {"generation": "web"})[0] == 200
    _, page = _call(
        site, "/aweme/v1/web/comment/list/select/?aweme_id=w1&cursor=0", session=session
    )
    ((c,),) = [page["comments"]]
    assert (c["cid"], c["aweme_id"], c["user"]["nickname"], page["has_more"]) == (
        "c1",
        "w1",
        "fan",
        0,
    )
    assert _call(site, "/api/drift", {"what": "comments", "mode": "shape"})[0] == 200
    _, drifted = _call(site, "/aweme/v1/web/comment/list/select/?aweme_id=w1", session=session)
    assert "comments" not in drifted and "comments_v2" in drifted
    _call(site, "/api/drift", {"what": "comments", "mode": "error"})
    _, failed = _call(site, "/aweme/v1/web/comment/list/select/?aweme_id=w1", session=session)
    assert failed["status_code"] not in (0, 8)
    assert _call(site, "/api/drift", {"what": "nothing", "mode": "shape"})[0] == 400


def test_dms_are_conversations_with_contacts_and_binary_history(site: SandboxServer) -> None:
    session = _session(site)
    for text, author in [("在吗", "小李"), ("你好", "阿珍"), ("价格？", "小李")]:
        _call(site, "/api/dms", {"user_id": "42", "text": text, "author": author})
    _, contacts = _call(site, "/aweme/v1/creator/im/user_detail/", session=session)
    users = contacts["user_list"]
    assert [u["user"]["nickname"] for u in users] == ["小李", "阿珍"]  # the latest first
    assert set(users[0]["user"]) >= {"SecretUseId", "ShortId", "nickname", "avatar_thumb"}
    request = urllib.request.Request(
        f"{site.base_url}/v1/im/message/history?to_user_id={users[0]['user_id']}",
        headers={"Cookie": f"{COOKIE}={session}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"] == "application/octet-stream"
        body = response.read()
    with pytest.raises(ValueError):
        json.loads(body)  # not JSON on the wire: the chat page keeps them in props


def test_post_work_reply_and_drift_commands(site: SandboxServer) -> None:
    assert (
        _hiscrm(site, "post-work", "秋冬上新", "--user-id", "42").stdout.strip() == "work w2 posted"
    )
    got = _hiscrm(site, "post-comment", "好看", "--user-id", "42", "--work", "w2")
    assert got.stdout.strip() == "comment c1 posted"
    got = _hiscrm(site, "post-reply", "谢谢", "--to", "c1", "--user-id", "42", "--count", "2")
    assert got.stdout.strip() == "2 replies (c2 … c3) to c1 posted"
    assert site.state.items[("comments", "42")][1]["parent_id"] == "c1"
    got = _hiscrm(site, "post-reply", "?", "--to", "c99", "--user-id", "42")
    assert got.returncode == 1 and "no work or comment c99" in got.stderr
    got = _hiscrm(site, "drift", "works", "--mode", "error")
    assert got.stdout.strip() == "the sandbox's works answer drifted (error)"
    assert site.state.drift == {"works": "error"}
    _hiscrm(site, "drift", "works", "--mode", "off")
    assert site.state.drift == {}
    assert _hiscrm(site, "drift", "everything").returncode == 2
