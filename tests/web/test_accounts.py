"""The account page: its config edited through the versioned update with the outcome
and its latency shown (applied, rejected, failed, timed out; an invalid value refused
with nothing written), enable / disable / move / remove, the audit trail, the newest
comments and DMs from the database (escaped; a notice when the database does not
answer), the findings, and the events that refresh it without a reload. Against a
real redis-server and an SQLite database; the owning workers are fakes that answer on
their control channel (tests/web/fake_workers.py)."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from redis.asyncio import Redis
from starlette.applications import Starlette

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import CrawlBatch, CrawledItem
from hiscrm_bus.pending import PendingTracker
from hiscrm_master.archive import Archive, Arrival
from hiscrm_master.updates import Updates
from hiscrm_web.app import create_app
from hiscrm_web.settings import WebSettings
from tests.redis_server import RedisServer
from tests.web.conftest import SignedIn, client_of, sign_in, web_settings_for
from tests.web.fake_workers import APPLIED, answering
from tests.web.page import Element, parse

pytestmark = pytest.mark.real

HX = {"HX-Request": "true"}


def hx(signed_in: SignedIn) -> dict[str, str]:
    """What htmx sends with a request from a page: the page's hx-headers too."""
    return HX | {"X-CSRF-Token": signed_in.csrf}


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def web_settings(redis_server: RedisServer, tmp_path: Path) -> WebSettings:
    database = f"sqlite+aiosqlite:///{tmp_path}/hiscrm.db"
    return web_settings_for(redis_server.url, database_url=database)


@pytest.fixture
async def archive(web_settings: WebSettings) -> AsyncIterator[Archive]:
    """The crawled-data database, made as a Master makes it (before the console
    starts: a reader does not create it)."""
    made = Archive.of(web_settings)
    await made.ready()
    yield made
    await made.close()


@pytest.fixture
async def app(web_settings: WebSettings, archive: Archive) -> AsyncIterator[Starlette]:
    made = create_app(web_settings)
    async with made.router.lifespan_context(made):
        yield made


async def add(
    redis: Redis, settings: WebSettings, account_id: str = "acc-1", **fields: Any
) -> None:
    values: dict[str, Any] = {"platform": "synthetic", "worker_id": "w1", **fields}
    await Updates(redis, settings, "test").create(AccountConfig(id=account_id, **values))


def form_values(form: Element) -> dict[str, str]:
    """What a browser submits for ``form`` as it is shown."""
    values: dict[str, str] = {}
    for e in form.walk():
        name = e.attrs.get("name")
        if not name or "disabled" in e.attrs:
            continue
        if e.tag == "input" and e.attrs.get("type") in ("checkbox", "radio"):
            if "checked" in e.attrs:
                values[name] = e.attrs.get("value", "on")
        elif e.tag == "input":
            values[name] = e.attrs.get("value", "")
        elif e.tag == "select":
            options = e.all("option")
            chosen = [o for o in options if "selected" in o.attrs] or options[:1]
            values[name] = chosen[0].attrs.get("value", chosen[0].text) if chosen else ""
        elif e.tag == "textarea":
            values[name] = e.text
    return values


async def edit(signed_in: SignedIn, changes: dict[str, str], **headers: str) -> httpx.Response:
    """Change fields in the account page's config form and submit it, as htmx does."""
    page = parse((await signed_in.client.get("/accounts/acc-1")).text)
    values = form_values(page.by_id("config")) | changes
    return await signed_in.client.post("/accounts/acc-1/config", data=values, headers=HX)


async def stored(redis: Redis, settings: WebSettings, account_id: str = "acc-1") -> dict[str, str]:
    found: dict[str, str] = await redis.hgetall(settings.keys.account(account_id))
    return found


def outcome_of(response: httpx.Response) -> Element:
    """The line the response puts into ``#outcome``."""
    (line,) = [e for e in parse(response.text).children if isinstance(e, Element)][:1]
    assert line.tag == "p", response.text
    return line


async def test_the_page_shows_config_status_findings_and_the_login_button(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings, name="shop", proxy="http://user:s3cret@proxy:8080")
    response = await signed_in.client.get("/accounts/acc-1")
    assert response.status_code == 200
    page = parse(response.text)
    config = form_values(page.by_id("config"))
    assert config["name"] == "shop"
    assert config["worker_id"] == "w1"
    assert config["monitor_interval_s"] == "30.0"
    assert config["enabled"] == "true"
    # the proxy may hold credentials: never shown, only that one is set
    assert "s3cret" not in response.text
    assert page.by_id("f-proxy").attrs["placeholder"] == "set"
    assert page.by_id("f-login_status").attrs["value"] == "not_logged_in"
    assert "readonly" in page.by_id("f-platform_user_id").attrs
    button = page.by_id("login-button")
    assert button.attrs["hx-post"] == "/accounts/acc-1/login"
    assert (button.attrs["hx-target"], button.attrs["hx-swap"]) == ("#modal", "innerHTML")
    assert page.by_id("modal").children == []
    # no worker runs: diagnose's finding with its remedy
    finding = page.by_id("findings").one("li", data_code="worker_offline")
    assert "hiscrm worker --id w1" in finding.text
    assert page.by_id("enable").attrs.get("disabled") is not None
    assert "disabled" not in page.by_id("disable").attrs
    # the outcome of its creation is pending: nothing in the audit trail yet
    assert [tr for tr in page.by_id("outcomes").all("tr") if "data-update" in tr.attrs] == []


async def test_an_unknown_account_is_a_404_page(signed_in: SignedIn) -> None:
    response = await signed_in.client.get("/accounts/nobody")
    assert response.status_code == 404
    assert "No account nobody" in parse(response.text).one("h1").text
    post = await signed_in.client.post(
        "/accounts/nobody/config", data={"csrf": signed_in.csrf, "name": "x"}
    )
    assert post.status_code == 404


async def test_an_edit_writes_only_the_changed_field_and_shows_the_applied_outcome(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings, name="shop")
    async with answering(web_settings, {"w1": APPLIED}) as seen:
        response = await edit(signed_in, {"monitor_interval_s": "12.5"})
    assert response.status_code == 200
    line = outcome_of(response)
    assert "ok" in line.classes
    assert re.fullmatch(r"applied version 2 by worker w1 in \d+\.\d ms", line.text), line.text
    after = await stored(redis, web_settings)
    assert (after["monitor_interval_s"], after["config_version"], after["name"]) == (
        "12.5",
        "2",
        "shop",
    )
    (update,) = seen
    assert update.updated_fields == ("monitor_interval_s",)
    # the audit trail and the form are swapped in as they are now
    answer = parse(response.text)
    row = answer.by_id("outcomes").one("tr", data_update=update.update_id)
    assert "applied" in row.text
    assert form_values(answer.by_id("config"))["monitor_interval_s"] == "12.5"
    assert answer.by_id("config").attrs["hx-swap-oob"] == "true"


async def test_a_rejection_shows_the_workers_reason(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    async with answering(web_settings, {"w1": ("rejected", "proxy refused <by> the site")}):
        response = await edit(signed_in, {"name": "shop"})
    assert response.status_code == 200
    line = outcome_of(response)
    assert line.text == "rejected by worker w1: proxy refused <by> the site"
    assert "&lt;by&gt;" in response.text


async def test_a_failed_update_shows_why(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    async with answering(web_settings, {"w1": ("failed", "no ACK after 3 attempts")}):
        response = await edit(signed_in, {"name": "shop"})
    assert outcome_of(response).text == "failed: no ACK after 3 attempts"


async def test_without_an_answer_the_edit_times_out_and_stays_pending(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    response = await edit(signed_in, {"name": "shop"})
    assert response.status_code == 200
    line = outcome_of(response)
    assert line.text.startswith("timed out: no outcome from worker w1 within 0.9 s")
    pending = await PendingTracker(redis, web_settings).of_account("acc-1")
    assert [p.version for p in pending] == [1, 2]
    status = parse(response.text).by_id("status")
    assert "v2" in status.text


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("monitor_interval_s", "soon", "monitor_interval_s='soon': Input should be a valid number"),
        ("max_items_per_crawl", "5000", "max_items_per_crawl='5000': Input should be less than"),
        ("worker_id", "not a worker", "worker_id='not a worker': String should match pattern"),
    ],
)
async def test_an_invalid_value_is_refused_with_the_reason_and_nothing_written(
    signed_in: SignedIn,
    redis: Redis,
    web_settings: WebSettings,
    field: str,
    value: str,
    reason: str,
) -> None:
    await add(redis, web_settings)
    before = await stored(redis, web_settings)
    response = await edit(signed_in, {field: value, "name": "also changed"})
    assert response.status_code == 422
    line = outcome_of(response)
    assert "error" in line.classes
    assert line.text.startswith("nothing written: ")
    assert reason in line.text
    assert await stored(redis, web_settings) == before
    pending = await PendingTracker(redis, web_settings).of_account("acc-1")
    assert [p.version for p in pending] == [1]


async def test_an_invalid_value_without_htmx_gets_the_whole_page_with_the_reason(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    page = parse((await signed_in.client.get("/accounts/acc-1")).text)
    values = form_values(page.by_id("config")) | {"monitor_interval_s": "-1"}
    response = await signed_in.client.post("/accounts/acc-1/config", data=values)
    assert response.status_code == 422
    error = parse(response.text).by_id("outcome").one("p", cls="error")
    assert "monitor_interval_s='-1'" in error.text


async def test_what_someone_else_changed_meanwhile_is_kept_or_is_a_conflict(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    page = parse((await signed_in.client.get("/accounts/acc-1")).text)
    shown = form_values(page.by_id("config"))
    # the Master moves the account while the operator edits another field
    await Updates(redis, web_settings, "master").change("acc-1", {"worker_id": "w2"}, "assignment")
    async with answering(web_settings, {"w2": APPLIED}):
        response = await signed_in.client.post(
            "/accounts/acc-1/config", data=shown | {"name": "shop"}, headers=HX
        )
    assert outcome_of(response).text.startswith("applied version 3 by worker w2")
    after = await stored(redis, web_settings)
    assert (after["worker_id"], after["name"]) == ("w2", "shop")
    # the same field changed both here and there: refused
    response = await signed_in.client.post(
        "/accounts/acc-1/config", data=shown | {"worker_id": "w3"}, headers=HX
    )
    assert response.status_code == 409
    assert "worker_id was changed by someone else meanwhile (now w2)" in outcome_of(response).text
    assert await stored(redis, web_settings) == after


async def test_a_stored_config_that_does_not_validate_is_shown_and_can_be_repaired(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    # written behind the store's back
    await redis.hset(web_settings.keys.account("acc-1"), "monitor_interval_s", "soon")
    page = parse((await signed_in.client.get("/accounts/acc-1")).text)
    assert "monitor_interval_s='soon'" in page.by_id("config").one("p", cls="error").text
    assert page.by_id("findings").one("li", data_code="invalid_config")
    async with answering(web_settings, {"w1": APPLIED}):
        response = await edit(signed_in, {"monitor_interval_s": "20"})
    assert outcome_of(response).text.startswith("applied version 2 by worker w1")
    assert (await stored(redis, web_settings))["monitor_interval_s"] == "20.0"
    assert not parse(response.text).by_id("config").all("p", cls="error")


async def test_an_unchanged_form_writes_nothing(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    before = await stored(redis, web_settings)
    response = await edit(signed_in, {"monitor_interval_s": "30"})  # 30 is 30.0
    assert outcome_of(response).text == "nothing changed"
    assert await stored(redis, web_settings) == before


async def test_the_proxy_is_set_and_cleared_without_being_shown(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    async with answering(web_settings, {"w1": APPLIED}):
        response = await edit(signed_in, {"proxy": "http://u:pw@proxy:3128"})
        assert "pw@proxy" not in response.text
        assert (await stored(redis, web_settings))["proxy"] == "http://u:pw@proxy:3128"
        page = parse((await signed_in.client.get("/accounts/acc-1")).text)
        assert page.by_id("f-proxy").attrs["placeholder"] == "set"
        await edit(signed_in, {"proxy_clear": "1"})
    assert "proxy" not in await stored(redis, web_settings)


async def test_disable_enable_and_move_go_through_the_versioned_update(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    async with answering(web_settings, {"w1": APPLIED, "w2": APPLIED}):
        response = await signed_in.client.post("/accounts/acc-1/disable", headers=hx(signed_in))
        assert outcome_of(response).text.startswith("applied version 2 by worker w1")
        assert (await stored(redis, web_settings))["enabled"] == "false"
        controls = parse(response.text).by_id("controls")
        assert "disabled" in controls.one(id="disable").attrs
        assert "disabled" not in controls.one(id="enable").attrs
        response = await signed_in.client.post("/accounts/acc-1/enable", headers=hx(signed_in))
        assert outcome_of(response).text.startswith("applied version 3 by worker w1")
        assert (await stored(redis, web_settings))["enabled"] == "true"
        response = await signed_in.client.post(
            "/accounts/acc-1/move", data={"worker": "w2"}, headers=hx(signed_in)
        )
        assert outcome_of(response).text.startswith("applied version 4 by worker w2")
        assert (await stored(redis, web_settings))["worker_id"] == "w2"
    response = await signed_in.client.post(
        "/accounts/acc-1/move", data={"worker": "bad id"}, headers=hx(signed_in)
    )
    assert response.status_code == 422
    assert (await stored(redis, web_settings))["worker_id"] == "w2"


async def test_remove_deletes_the_account_and_sends_the_browser_to_the_fleet(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    response = await signed_in.client.post(
        "/accounts/acc-1/remove", data={"csrf": signed_in.csrf}, headers=HX
    )
    assert response.headers["HX-Redirect"] == "/"
    assert await stored(redis, web_settings) == {}
    assert (await signed_in.client.get("/accounts/acc-1")).status_code == 404


async def test_posts_without_the_csrf_token_are_refused_and_write_nothing(
    client: httpx.AsyncClient, signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await add(redis, web_settings)
    before = await stored(redis, web_settings)
    for path, data in (
        ("/accounts/acc-1/config", {"name": "x", "was_name": ""}),
        ("/accounts/acc-1/disable", {}),
        ("/accounts/acc-1/move", {"worker": "w2"}),
        ("/accounts/acc-1/remove", {}),
    ):
        response = await client.post(path, data=data)
        assert response.status_code == 403, path
        wrong = await client.post(path, data={**data, "csrf": "not-the-token"})
        assert wrong.status_code == 403, path
    assert await stored(redis, web_settings) == before


def comment(item_id: str, text: str, author: str, minute: int = 0) -> CrawledItem:
    return CrawledItem(
        kind="comment",
        item_id=item_id,
        text=text,
        author=author,
        created_at=T0.replace(minute=minute),
    )


async def store(archive: Archive, *items: CrawledItem) -> None:
    batch = CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=items)
    await archive.store([Arrival(batch)])


async def test_comments_and_dms_are_shown_newest_first_as_text(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings, archive: Archive
) -> None:
    await add(redis, web_settings)
    script = '<script>alert("x")</script><b>bold</b>'
    dm = CrawledItem(kind="dm", item_id="m1", text="hi & bye", author="fan", created_at=T0)
    await store(
        archive,
        comment("c1", "first", "fan1", minute=1),
        comment("c2", script, "<img src=x onerror=alert(1)>", minute=2),
        dm,
    )
    response = await signed_in.client.get("/accounts/acc-1")
    page = parse(response.text)
    comments = page.by_id("comments")
    assert [li.attrs["data-item"] for li in comments.all("li")] == ["c2", "c1"]
    shown = comments.one("li", data_item="c2")
    assert shown.one(cls="text").text == script
    assert shown.one(cls="author").text == "<img src=x onerror=alert(1)>"
    # text, never markup
    assert comments.all("script") == comments.all("b") == comments.all("img") == []
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in response.text
    assert page.by_id("dms").one("li", data_item="m1").one(cls="text").text == "hi & bye"
    assert not page.has_id("items-notice")


async def test_a_database_that_does_not_answer_is_one_line_and_the_page_still_renders(
    web_settings: WebSettings, tmp_path: Path, redis: Redis, users: Any
) -> None:
    missing = f"sqlite+aiosqlite:///{tmp_path}/none/hiscrm.db"
    settings = web_settings.model_copy(update={"database_url": missing})
    await add(redis, settings)
    made = create_app(settings)
    async with made.router.lifespan_context(made), client_of(made) as client:
        await sign_in(client)
        response = await client.get("/accounts/acc-1")
    assert response.status_code == 200
    page = parse(response.text)
    notice = page.by_id("items-notice")
    assert notice.text.startswith("crawled comments and DMs are not available: database")
    assert "there is no file" in notice.text
    assert not page.has_id("comments")
    assert page.has_id("config")
    assert page.has_id("findings")


@asynccontextmanager
async def served(app: Starlette) -> AsyncIterator[str]:
    """The console served by uvicorn on a loopback socket bound before it starts (a
    connection made meanwhile waits in the backlog)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="off", log_config=None, log_level="warning", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            yield f"http://127.0.0.1:{port}"
            server.should_exit = True
    finally:
        sock.close()


async def next_event(lines: AsyncIterator[str]) -> str:
    async for line in lines:
        if line.startswith("event: "):
            return line.removeprefix("event: ")
    raise AssertionError("the stream ended")


async def test_the_page_hears_of_new_items_and_outcomes_without_a_reload(
    app: Starlette, users: Any, redis: Redis, web_settings: WebSettings, archive: Archive
) -> None:
    await add(redis, web_settings)
    page = parse((await client_and_page(app)).text)
    section = page.one("section", cls="account")
    assert section.attrs["sse-connect"] == "/accounts/acc-1/events"
    assert page.by_id("items").attrs["hx-trigger"] == "sse:items"
    assert "sse:outcome" in page.by_id("status-box").attrs["hx-trigger"]
    async with served(app) as url, httpx.AsyncClient(base_url=url) as browser:
        await sign_in(browser)
        async with browser.stream("GET", "/accounts/acc-1/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            lines = events.aiter_lines()
            with anyio.fail_after(30):
                assert await anext(lines) == ": watching"
                await store(archive, comment("new-1", "a fan's new comment", "fan"))
                assert await next_event(lines) == "items"
                items = parse((await browser.get("/accounts/acc-1/items")).text)
                assert items.by_id("comments").one("li", data_item="new-1")
                async with answering(web_settings, {"w1": APPLIED}):
                    await Updates(redis, web_settings, "test").change(
                        "acc-1", {"name": "shop"}, "admin_update"
                    )
                    heard = {await next_event(lines)}
                    while "outcome" not in heard:
                        heard.add(await next_event(lines))
                status = parse((await browser.get("/accounts/acc-1/status")).text)
                assert "applied" in status.by_id("outcomes").text


async def client_and_page(app: Starlette) -> httpx.Response:
    async with client_of(app) as client:
        await sign_in(client)
        return await client.get("/accounts/acc-1")


async def test_the_events_of_an_unknown_account_are_a_404(signed_in: SignedIn) -> None:
    response = await signed_in.client.get("/accounts/nobody/events")
    assert response.status_code == 404
