"""The sandbox site's lists over HTTP, in-process: pages like the creator centre's
(``cursor`` / ``has_more`` / ``total_count``), bursts posted in one request, and
``hiscrm sandbox post-comment --count``."""

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
