"""When Redis or the database fails under a request, the console answers with one
sentence (503 while something is down, 500 for a refused command), logs one line, and
shows no traceback."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis import exceptions as rexc
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from hiscrm_bus.errors import BusUnavailable
from hiscrm_master.database import DatabaseUnavailable
from hiscrm_web import pages
from hiscrm_web.app import create_app, route
from hiscrm_web.auth import Users
from hiscrm_web.failures import UNAVAILABLE
from hiscrm_web.settings import WebSettings
from tests.redis_server import RedisServer, running
from tests.web.conftest import PASSWORD, USER, client_of, csrf_of, sign_in, web_settings_for
from tests.web.page import parse

pytestmark = pytest.mark.real

HX = {"HX-Request": "true"}
REFUSED_WRONGTYPE = (
    "Redis refused a command (WRONGTYPE): a stored value is not what the console expects; "
    "the console's log says which request."
)


def assert_one_sentence(response: httpx.Response, status: int, shown: str) -> None:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    assert "Internal Server Error" not in response.text
    if response.request.headers.get("HX-Request"):
        # htmx puts it in the page's #problem, not in the part it asked for
        assert response.headers["HX-Retarget"] == "#problem"
        assert response.headers["HX-Reswap"] == "innerHTML"
        assert parse(response.text).one("p", "error").text == shown
    else:
        assert parse(response.text).by_id("problem").text == shown


def one_line_each(caplog: pytest.LogCaptureFixture, count: int) -> None:
    lines = [r for r in caplog.records if r.name == "hiscrm_web.failures"]
    assert len(lines) == count, [r.getMessage() for r in lines]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)


@pytest.fixture
def web_settings(redis_server: RedisServer, tmp_path: Path) -> WebSettings:
    database = f"sqlite+aiosqlite:///{tmp_path}/hiscrm.db"
    return web_settings_for(redis_server.url, database_url=database)


async def test_with_redis_down_pages_say_so_in_one_sentence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running(RedisServer(tmp_path / "redis")) as server:
        settings = web_settings_for(
            server.url, database_url=f"sqlite+aiosqlite:///{tmp_path}/hiscrm.db"
        )
        redis = Redis.from_url(settings.redis_url)
        try:
            assert await Users(redis, settings.keys).add(USER, PASSWORD)
        finally:
            await redis.aclose()
        app = create_app(settings)
        async with app.router.lifespan_context(app), client_of(app) as client:
            assert (await sign_in(client)).status_code == 303
            page = await client.get("/")
            assert page.status_code == 200
            csrf = csrf_of(page.text)
            server.stop()
            caplog.set_level(logging.WARNING, "hiscrm_web.failures")
            for path in ("/", "/accounts/acc-1"):
                assert_one_sentence(await client.get(path), 503, UNAVAILABLE)
            assert_one_sentence(await client.get("/", headers=HX), 503, UNAVAILABLE)
            fields = {"csrf": csrf, "name": "z"}
            post = await client.post("/accounts/acc-1/config", data=fields, headers=HX)
            assert_one_sentence(post, 503, UNAVAILABLE)
            # the sign-in form needs no Redis to be shown; signing in does
            assert (await client.get("/signin")).status_code == 200
            fields = {"user": USER, "password": PASSWORD, "signin_csrf": "x"}
            assert_one_sentence(await client.post("/signin", data=fields), 503, UNAVAILABLE)
            one_line_each(caplog, 5)
            # back up, the console answers again (this Redis kept nothing: sign in anew)
            server.start()
            assert (await client.get("/")).status_code == 303


@pytest.fixture
async def app(web_settings: WebSettings) -> AsyncIterator[Starlette]:
    made = create_app(web_settings)
    async with made.router.lifespan_context(made):
        yield made


async def test_an_account_key_of_the_wrong_type_is_a_500_with_one_sentence(
    app: Starlette,
    users: Users,
    redis: Redis,
    web_settings: WebSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await redis.set(web_settings.keys.account("acc-x"), "not a hash")
    async with client_of(app) as client:
        assert (await sign_in(client)).status_code == 303
        csrf = csrf_of((await client.get("/")).text)
        caplog.set_level(logging.WARNING, "hiscrm_web.failures")
        fields = {"csrf": csrf, "name": "z"}
        edit = await client.post("/accounts/acc-x/config", data=fields, headers=HX)
        assert_one_sentence(edit, 500, REFUSED_WRONGTYPE)
        edit = await client.post("/accounts/acc-x/config", data=fields)
        assert_one_sentence(edit, 500, REFUSED_WRONGTYPE)
    one_line_each(caplog, 2)
    assert await redis.get(web_settings.keys.account("acc-x")) == "not a hash"


async def _raising(request: Request) -> Response:
    raise {
        "bus": BusUnavailable("Redis is unreachable: Error 111"),
        "database": DatabaseUnavailable("the database is locked"),
        "reply": rexc.ResponseError("NOPERM this user has no permissions to run 'hset'"),
    }[request.path_params["what"]]


async def test_each_kind_of_failure_has_its_status_and_sentence(
    web_settings: WebSettings, users: Users, caplog: pytest.LogCaptureFixture
) -> None:
    made = create_app(web_settings, [*pages.routes(), route("/fail/{what}", _raising)])
    caplog.set_level(logging.WARNING, "hiscrm_web.failures")
    async with made.router.lifespan_context(made), client_of(made) as client:
        assert (await sign_in(client)).status_code == 303
        assert_one_sentence(await client.get("/fail/bus"), 503, UNAVAILABLE)
        assert_one_sentence(await client.get("/fail/database"), 503, UNAVAILABLE)
        refused = REFUSED_WRONGTYPE.replace("WRONGTYPE", "NOPERM")
        assert_one_sentence(await client.get("/fail/reply"), 500, refused)
        assert_one_sentence(await client.get("/fail/reply", headers=HX), 500, refused)
        # a browser page's htmx puts a 500 or 503 in #problem
        page = (await client.get("/")).text
        assert '{"code": "500|503", "swap": true, "error": true, "target": "#problem"}' in page
        assert parse(page).by_id("problem").text == ""
    one_line_each(caplog, 4)
