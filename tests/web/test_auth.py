"""Signing in to the console: sessions, the sign-in limit, CSRF, headers, and the users
made with ``hiscrm web adduser``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from hiscrm_bus.connection import text
from hiscrm_web.app import COOKIE
from hiscrm_web.auth import Users
from hiscrm_web.settings import WebSettings
from tests.cli.process import hiscrm
from tests.e2e.stack import running_stack
from tests.redis_server import RedisServer, free_port
from tests.web.conftest import (
    PASSWORD,
    USER,
    SignedIn,
    client_of,
    csrf_of,
    sign_in,
    signin_token,
)

pytestmark = pytest.mark.real


async def values_in(redis: Redis, settings: WebSettings) -> dict[str, str]:
    """Every key under the test's prefix and everything it holds (``redis`` decodes)."""
    found: dict[str, str] = {}
    async for key in redis.scan_iter(match=f"{settings.key_prefix}*"):
        kind = text(await redis.type(key))
        if kind == "hash":
            fields = await redis.hgetall(key)
            found[text(key)] = " ".join(f"{text(k)}={text(v)}" for k, v in fields.items())
        elif kind == "set":
            found[text(key)] = " ".join(sorted(text(m) for m in await redis.smembers(key)))
        elif kind == "string":
            found[text(key)] = text(await redis.get(key) or "")
        else:
            found[text(key)] = kind
    return found


async def test_pages_without_a_session_send_the_browser_to_sign_in(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/", "/events/fleet", "/accounts/acc-1"):
        response = await client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/signin"
    # htmx follows HX-Redirect, not a 303 (it would swap the sign-in page into a table)
    partial = await client.get("/", headers={"HX-Request": "true"})
    assert partial.status_code == 401
    assert partial.headers["HX-Redirect"] == "/signin"
    # a POST without a session is sent away too, before any CSRF check or handler
    post = await client.post("/signout", data={"csrf": "x"})
    assert post.status_code == 303
    page = await client.get("/signin")
    assert page.status_code == 200
    assert '<form method="post" action="/signin"' in page.text


async def test_a_right_password_signs_in_and_a_wrong_one_says_so(
    client: httpx.AsyncClient, users: Users
) -> None:
    for user, password in ((USER, "wrong password!"), ("nobody", PASSWORD), ("", "")):
        response = await sign_in(client, user, password)
        assert response.status_code == 401
        assert "wrong user or password" in response.text
        assert COOKIE not in response.cookies
    assert (await client.get("/")).status_code == 303
    response = await sign_in(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    page = await client.get("/")
    assert page.status_code == 200
    assert f'<span class="who">{USER}</span>' in page.text


async def test_a_sign_in_posted_from_another_site_is_refused(
    client: httpx.AsyncClient, app: Starlette, users: Users
) -> None:
    """Login CSRF: a page elsewhere cannot sign the operator's browser in as the
    attacker's user: it can post the form, but neither read nor set its cookie."""
    token = signin_token((await client.get("/signin")).text)
    async with client_of(app, "10.0.0.9") as elsewhere:  # no cookie from our form
        fields = {"user": USER, "password": PASSWORD, "signin_csrf": token}
        forged = await elsewhere.post("/signin", data=fields)
        assert forged.status_code == 403
        assert "the sign-in form expired or came from elsewhere" in forged.text
        assert COOKIE not in forged.cookies
        no_token = await client.post("/signin", data={"user": USER, "password": PASSWORD})
        assert no_token.status_code == 403
    assert (await sign_in(client)).status_code == 303  # the form itself works


async def test_the_name_typed_at_sign_in_is_shown_as_text(
    client: httpx.AsyncClient, users: Users
) -> None:
    response = await sign_in(client, '"><script>alert(1)</script>', "nope")
    assert response.status_code == 401
    assert "<script>alert(1)" not in response.text
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


async def test_too_many_failed_sign_ins_from_one_address_must_wait(
    app: Starlette, users: Users, web_settings: WebSettings
) -> None:
    limit = web_settings.web_max_attempts
    async with client_of(app, "10.0.0.7") as guesser, client_of(app, "10.0.0.8") as other:
        for _ in range(limit):
            assert (await sign_in(guesser, USER, "guess guess guess")).status_code == 401
        # past the limit even the right password is refused, and the page says for how long
        blocked = await sign_in(guesser)
        assert blocked.status_code == 429
        assert f"too many failed sign-ins: wait up to {web_settings.web_attempts_window_s} s" in (
            blocked.text
        )
        assert (await guesser.get("/")).status_code == 303
        # another address is not held up by it
        assert (await sign_in(other)).status_code == 303


async def test_the_session_cookie_is_http_only_and_same_site_strict(
    client: httpx.AsyncClient, users: Users, web_settings: WebSettings
) -> None:
    response = await sign_in(client)
    (cookie,) = [c for c in response.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}=")]
    parts = [p.strip().lower() for p in cookie.split(";")]
    assert parts[0].startswith(f"{COOKIE}=")
    assert "httponly" in parts
    assert "samesite=strict" in parts
    assert "path=/" in parts
    assert f"max-age={web_settings.web_session_ttl_s}" in parts
    assert "secure" not in parts  # HISCRM_WEB_SECURE_COOKIES sets it, for HTTPS


async def test_redis_holds_neither_the_session_token_nor_the_password(
    client: httpx.AsyncClient, users: Users, redis: Redis, web_settings: WebSettings
) -> None:
    response = await sign_in(client)
    token = response.cookies[COOKIE]
    stored = await values_in(redis, web_settings)
    everything = "\n".join(f"{k} {v}" for k, v in stored.items())
    assert token not in everything
    assert PASSWORD not in everything
    digest = hashlib.sha256(token.encode()).hexdigest()
    session = web_settings.keys.web_session(digest)
    assert session in stored
    assert f"user={USER}" in stored[session]
    assert 0 < await redis.ttl(session) <= web_settings.web_session_ttl_s
    hashed = stored[web_settings.keys.web_user(USER)]
    assert "password=$argon2id$" in hashed


async def test_signing_out_ends_the_session_for_good(
    signed_in: SignedIn, app: Starlette, redis: Redis, web_settings: WebSettings
) -> None:
    token = signed_in.client.cookies[COOKIE]
    response = await signed_in.client.post("/signout", data={"csrf": signed_in.csrf})
    assert response.status_code == 303
    assert response.headers["location"] == "/signin"
    assert (await signed_in.client.get("/")).status_code == 303
    # the old cookie, kept by someone, no longer opens a page either
    async with client_of(app) as replay:
        replay.cookies.set(COOKIE, token)
        assert (await replay.get("/")).status_code == 303
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert not await redis.exists(web_settings.keys.web_session(digest))


async def test_a_post_needs_the_sessions_csrf_token(signed_in: SignedIn, app: Starlette) -> None:
    client = signed_in.client
    for form in ({}, {"csrf": "not the token"}, {"csrf": ""}):
        refused = await client.post("/signout", data=form)
        assert refused.status_code == 403
        assert "CSRF token is missing or wrong" in refused.text
    wrong_header = await client.post("/signout", headers={"X-CSRF-Token": "nope"})
    assert wrong_header.status_code == 403
    # nothing happened: still signed in
    assert (await client.get("/")).status_code == 200
    # another session's token is no better than none
    async with client_of(app) as other:
        await sign_in(other)
        other_csrf = csrf_of((await other.get("/")).text)
    assert other_csrf != signed_in.csrf
    assert (await client.post("/signout", data={"csrf": other_csrf})).status_code == 403
    # the header htmx sends (the page's hx-headers) is the token too
    page = (await client.get("/")).text
    assert f'hx-headers=\'{{"X-CSRF-Token": "{signed_in.csrf}"}}\'' in page
    accepted = await client.post("/signout", headers={"X-CSRF-Token": signed_in.csrf})
    assert accepted.status_code == 303
    assert (await client.get("/")).status_code == 303


async def test_every_page_carries_the_security_headers(app: Starlette, signed_in: SignedIn) -> None:
    async with client_of(app) as anonymous:
        responses = [
            await anonymous.get("/signin"),
            await anonymous.get("/"),
            await signed_in.client.get("/"),
            await signed_in.client.get("/static/console.css"),
        ]
    for response in responses:
        csp = response.headers["content-security-policy"]
        directives = dict(d.strip().partition(" ")[::2] for d in csp.split(";"))
        # scripts only from the console itself: no inline script, no eval, no CDN
        assert directives["default-src"] == "'self'"
        assert "script-src" not in directives
        assert directives["frame-ancestors"] == "'none'"
        assert directives["form-action"] == "'self'"
        assert directives["base-uri"] == "'none'"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
    # what a signed-in operator saw stays out of caches
    assert responses[2].headers["cache-control"] == "no-store"
    # htmx comes from the package, not a CDN
    assert '<script src="/static/htmx-2.0.11.min.js"' in responses[2].text
    assert "https://" not in responses[2].text


# `hiscrm web adduser` and `hiscrm web`, as an operator runs them


async def test_adduser_reads_the_password_from_a_file_and_the_user_can_sign_in(
    web_settings: WebSettings, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("a long enough password\nignored second line\n")
    code, out, err = await hiscrm(
        web_settings, "web", "adduser", "alice", "--password-file", str(secret)
    )
    assert (code, err) == (0, ""), err
    assert out.strip() == "user alice added"
    assert (await sign_in(client, "alice", "a long enough password")).status_code == 303


async def test_adduser_refuses_a_short_password_and_an_existing_user(
    web_settings: WebSettings, app: Starlette, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    short = tmp_path / "short"
    short.write_text("tiny\n")
    code, out, err = await hiscrm(
        web_settings, "web", "adduser", "bob", "--password-file", str(short)
    )
    assert code == 2
    assert out == ""
    assert err.strip() == "error: a password needs at least 12 characters"
    assert (await sign_in(client, "bob", "tiny")).status_code == 401

    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("the first password\n")
    second.write_text("the second password\n")
    args = ("web", "adduser", "bob", "--password-file")
    assert (await hiscrm(web_settings, *args, str(first)))[0] == 0
    code, out, err = await hiscrm(web_settings, *args, str(second))
    assert code == 1
    assert err.strip() == "error: user 'bob' exists already (--replace sets a new password)"
    # the first password still holds
    assert (await sign_in(client, "bob", "the second password")).status_code == 401
    assert (await sign_in(client, "bob", "the first password")).status_code == 303

    code, out, err = await hiscrm(web_settings, *args, str(second), "--replace")
    assert (code, out.strip()) == (0, "user bob updated"), err
    async with client_of(app) as fresh:
        assert (await sign_in(fresh, "bob", "the first password")).status_code == 401
        assert (await sign_in(fresh, "bob", "the second password")).status_code == 303


async def test_adduser_without_a_password_says_how_to_give_one(
    web_settings: WebSettings, tmp_path: Path
) -> None:
    # no terminal to ask on (the tests' stdin is not one)
    code, _out, err = await hiscrm(web_settings, "web", "adduser", "carol")
    assert code == 2
    assert err.strip() == "error: give --password-file FILE (no terminal to ask for the password)"
    code, _out, err = await hiscrm(
        web_settings, "web", "adduser", "carol", "--password-file", str(tmp_path / "missing")
    )
    assert code == 2
    assert err.startswith(f"error: cannot read a password from {tmp_path / 'missing'}")
    assert len(err.strip().splitlines()) == 1
    bad_name = tmp_path / "pw"
    bad_name.write_text("long enough password\n")
    code, _out, err = await hiscrm(
        web_settings, "web", "adduser", "no spaces", "--password-file", str(bad_name)
    )
    assert code == 2
    assert "1 to 64 letters, digits, and _ . @ - only" in err


async def test_web_with_an_unreachable_redis_says_so_in_one_sentence(
    web_settings: WebSettings,
) -> None:
    dead = web_settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with anyio.fail_after(30):
        code, out, err = await hiscrm(dead, "web", "--port", str(free_port()))
    assert code == 2
    assert out == ""  # it never claimed to serve
    assert err.strip().splitlines() == [
        f"error: Cannot reach Redis at {dead.redis_url} (is redis-server running? set "
        "HISCRM_REDIS_URL or --redis-url)"
    ]


def _guess(browser: httpx.Client, headers: dict[str, str]) -> httpx.Response:
    """A wrong password through the sign-in form, as a browser posts it."""
    token = signin_token(browser.get("/signin").text)
    fields = {"user": USER, "password": "a guess", "signin_csrf": token}
    return browser.post("/signin", data=fields, headers=headers)


def test_the_sign_in_limit_is_not_escaped_by_a_forwarded_for_header(
    redis_server: RedisServer, web_settings: WebSettings, tmp_path: Path
) -> None:
    """``hiscrm web`` as served (uvicorn believes X-Forwarded-For from loopback unless
    told otherwise, and the console listens on loopback): each guess from another
    claimed address must still count against the real one."""
    with running_stack(redis_server.url, web_settings.key_prefix, tmp_path) as stack:
        url = stack.web(HISCRM_WEB_MAX_ATTEMPTS="2")
        with httpx.Client(base_url=url) as browser:
            codes = [
                _guess(browser, {"X-Forwarded-For": f"10.0.0.{n}"}).status_code for n in range(3)
            ]
        assert codes == [401, 401, 429]
        # a proxy the operator names is believed (the address behind it is counted)
        url = stack.web("proxied", HISCRM_WEB_TRUSTED_PROXIES="127.0.0.1")
        with httpx.Client(base_url=url) as browser:
            behind = _guess(browser, {"X-Forwarded-For": "10.0.0.9"})
        assert behind.status_code == 401
        assert stack.r.exists(stack.keys.web_attempts("10.0.0.9"))
