"""The console in process: ``create_app`` inside its lifespan, on the session's
redis-server with a key prefix of the test's own, driven by an httpx client over ASGI."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from hiscrm_web.app import create_app
from hiscrm_web.auth import Users
from hiscrm_web.settings import WebSettings
from tests.conftest import fast_settings
from tests.redis_server import RedisServer

USER = "ops"
PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def web_settings_for(url: str, **overrides: object) -> WebSettings:
    """The test suite's short timeouts and a fresh key prefix, as console settings."""
    values = fast_settings(url).model_dump(exclude_unset=True)
    values |= {"master_id": "web", "web_max_attempts": 5, **overrides}
    return WebSettings.model_validate(values)


def csrf_of(page: str) -> str:
    """The CSRF token a signed-in page carries in its forms."""
    found = _CSRF.search(page)
    assert found, page
    return found.group(1)


@pytest.fixture
def web_settings(redis_server: RedisServer) -> WebSettings:
    return web_settings_for(redis_server.url)


@pytest.fixture
async def redis(web_settings: WebSettings) -> AsyncIterator[Redis]:
    """The test's own view of Redis (what the console wrote)."""
    client = Redis.from_url(web_settings.redis_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def users(redis: Redis, web_settings: WebSettings) -> Users:
    made = Users(redis, web_settings.keys)
    assert await made.add(USER, PASSWORD)
    return made


@pytest.fixture
async def app(web_settings: WebSettings) -> AsyncIterator[Starlette]:
    """The console with its lifespan entered (Redis connected), as uvicorn runs it."""
    made = create_app(web_settings)
    async with made.router.lifespan_context(made):
        yield made


def client_of(app: Starlette, address: str = "127.0.0.1") -> httpx.AsyncClient:
    """A browser-less client from ``address`` (the sign-in limit counts per address)."""
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(app) as made:
        yield made


@dataclass
class SignedIn:
    client: httpx.AsyncClient
    csrf: str


async def sign_in(
    client: httpx.AsyncClient, user: str = USER, password: str = PASSWORD
) -> httpx.Response:
    form = await client.get("/signin")  # its token, in the form and a cookie
    token = signin_token(form.text)
    return await client.post(
        "/signin", data={"user": user, "password": password, "signin_csrf": token}
    )


def signin_token(page: str) -> str:
    """The sign-in form's CSRF token."""
    found = re.search(r'name="signin_csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


@pytest.fixture
async def signed_in(client: httpx.AsyncClient, users: Users) -> SignedIn:
    """``client`` with a session of user ``ops``, and the session's CSRF token."""
    response = await sign_in(client)
    assert response.status_code == 303, response.text
    page = await client.get("/")
    assert page.status_code == 200, page.text
    return SignedIn(client, csrf_of(page.text))
