"""How long a console session lasts: not past a new password, the user's removal
(``hiscrm web adduser --replace``, ``hiscrm web deluser``), or its absolute age."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from hiscrm_web.app import COOKIE
from hiscrm_web.auth import Users
from hiscrm_web.settings import WebSettings
from tests.cli.process import hiscrm
from tests.web.conftest import PASSWORD, USER, SignedIn, client_of, sign_in

pytestmark = pytest.mark.real


async def still_works(app: Starlette, token: str, csrf: str, redis: Redis, s: WebSettings) -> bool:
    """Whether a kept cookie still opens a page, or makes a change (adds an account)."""
    async with client_of(app, "10.0.0.66") as thief:
        thief.cookies.set(COOKIE, token)
        page = await thief.get("/")
        fields = {"csrf": csrf, "id": "acc-stolen", "platform": "sandbox"}
        post = await thief.post("/accounts", data=fields, headers={"HX-Request": "true"})
    written = bool(await redis.exists(s.keys.account("acc-stolen")))
    if page.status_code == 200 or written:
        return True
    assert (page.status_code, page.headers["location"]) == (303, "/signin")
    assert (post.status_code, post.headers["HX-Redirect"]) == (401, "/signin")
    return False


async def test_a_new_password_ends_the_users_sessions(
    signed_in: SignedIn,
    app: Starlette,
    redis: Redis,
    web_settings: WebSettings,
    tmp_path: Path,
) -> None:
    token = signed_in.client.cookies[COOKIE]
    assert (await signed_in.client.get("/")).status_code == 200
    new = tmp_path / "new"
    new.write_text("a brand new password\n")
    code, out, err = await hiscrm(
        web_settings, "web", "adduser", USER, "--password-file", str(new), "--replace"
    )
    assert (code, out.strip()) == (0, f"user {USER} updated"), err
    assert not await still_works(app, token, signed_in.csrf, redis, web_settings)
    # the ended session is gone from Redis too
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert not await redis.exists(web_settings.keys.web_session(digest))
    # the new password signs in
    async with client_of(app) as fresh:
        assert (await sign_in(fresh, USER, PASSWORD)).status_code == 401
        assert (await sign_in(fresh, USER, "a brand new password")).status_code == 303
        assert (await fresh.get("/")).status_code == 200


async def test_deluser_removes_the_user_and_ends_its_sessions(
    signed_in: SignedIn,
    app: Starlette,
    redis: Redis,
    web_settings: WebSettings,
    tmp_path: Path,
) -> None:
    token = signed_in.client.cookies[COOKIE]
    code, out, err = await hiscrm(web_settings, "web", "deluser", USER)
    assert (code, err) == (0, ""), err
    assert out.strip() == f"user {USER} removed; its sessions are ended"
    assert not await still_works(app, token, signed_in.csrf, redis, web_settings)
    assert not await redis.exists(web_settings.keys.web_user(USER))
    assert await Users(redis, web_settings.keys).names() == []
    async with client_of(app) as fresh:
        assert (await sign_in(fresh, USER, PASSWORD)).status_code == 401
    # made again under the same name (even with the same password), the old cookie
    # stays ended
    again = tmp_path / "again"
    again.write_text(f"{PASSWORD}\n")
    code, _out, err = await hiscrm(
        web_settings, "web", "adduser", USER, "--password-file", str(again)
    )
    assert code == 0, err
    assert not await still_works(app, token, signed_in.csrf, redis, web_settings)
    # a user that is not there is an error, exit 1
    code, out, err = await hiscrm(web_settings, "web", "deluser", "nobody")
    assert (code, out) == (1, "")
    assert err.strip() == "error: user 'nobody' does not exist"


async def test_a_session_in_use_still_ends_at_its_absolute_age(
    redis: Redis, web_settings: WebSettings, users: Users
) -> None:
    now = [1_000_000.0]
    hours = Users(redis, web_settings.keys, ttl_s=3600, max_age_s=3 * 3600, clock=lambda: now[0])
    generation = await hours.authenticate(USER, PASSWORD)
    assert generation is not None
    token, session = await hours.start(USER, generation)
    key = web_settings.keys.web_session(session.token_hash)
    for _ in range(5):  # used every 30 minutes: each use renews the idle TTL…
        now[0] += 1800
        assert await hours.session(token) == session
    # …but never past the absolute age
    assert await redis.ttl(key) <= 3 * 3600 - 5 * 1800
    now[0] += 1801
    assert await hours.session(token) is None
    assert not await redis.exists(key)


async def test_a_session_from_before_generations_must_sign_in_again(
    app: Starlette, redis: Redis, web_settings: WebSettings, users: Users
) -> None:
    """A session written by an older console (no generation, no start time) is not
    taken as one that never ends."""
    token = "an-old-sessions-token"
    digest = hashlib.sha256(token.encode()).hexdigest()
    await redis.hset(web_settings.keys.web_session(digest), mapping={"user": USER, "csrf": "c"})
    async with client_of(app) as old:
        old.cookies.set(COOKIE, token)
        response = await old.get("/")
    assert response.status_code == 303
    assert not await redis.exists(web_settings.keys.web_session(digest))


async def test_a_user_made_before_generations_can_sign_in_and_be_reset(
    app: Starlette, client: httpx.AsyncClient, redis: Redis, web_settings: WebSettings
) -> None:
    users = Users(redis, web_settings.keys)
    assert await users.add("legacy", PASSWORD)
    await redis.hdel(web_settings.keys.web_user("legacy"), "generation")
    assert (await sign_in(client, "legacy", PASSWORD)).status_code == 303
    assert (await client.get("/")).status_code == 200
    await users.add("legacy", "another long password", replace=True)
    assert (await client.get("/")).status_code == 303
