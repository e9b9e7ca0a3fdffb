"""Request bodies are bounded per route: 413 before an over-limit body is read whole,
whether it says its length or streams without one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from hiscrm_web.auth import Users
from hiscrm_web.bodies import (
    FORM_BODY_BYTES,
    IMPORT_BODY_BYTES,
    MAX_UPLOAD_BYTES,
    SIGNIN_BODY_BYTES,
)
from hiscrm_web.settings import WebSettings
from tests.web.conftest import SignedIn, client_of, sign_in, signin_token

pytestmark = pytest.mark.real

CHUNK = 64 * 1024
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Endless:
    """A form body of 1 GiB, sent in chunks without a Content-Length; counts what was
    taken from it."""

    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.prefix + b"f="
        for _ in range(1024**3 // CHUNK):
            self.sent += CHUNK
            yield b"a" * CHUNK


async def test_a_huge_sign_in_body_is_refused_before_it_is_read(
    app: Starlette, users: Users
) -> None:
    async with client_of(app, "10.0.0.9") as anyone:
        # no cookie from the sign-in form: refused before the body is read
        body = Endless()
        response = await anyone.post("/signin", content=body, headers=FORM)
        assert response.status_code == 403
        assert body.sent == 0
        # with the form's cookie: streamed without a length, cut at the limit
        token = signin_token((await anyone.get("/signin")).text)
        body = Endless(f"signin_csrf={token}&".encode())
        response = await anyone.post("/signin", content=body, headers=FORM)
        assert response.status_code == 413
        assert response.text == "the request is larger than this form takes (16 KiB)"
        assert body.sent <= SIGNIN_BODY_BYTES + CHUNK
        # a declared length over the limit is refused without reading a byte
        body = Endless()
        declared = {**FORM, "Content-Length": str(SIGNIN_BODY_BYTES + 1)}
        response = await anyone.post("/signin", content=body, headers=declared)
        assert response.status_code == 413
        assert body.sent == 0
        # many small fields are refused too, with a sentence
        fields = "&".join(f"f{n}=x" for n in range(100)).encode()
        response = await anyone.post("/signin", content=fields, headers=FORM)
        assert response.status_code == 400
        assert "Too many fields" in response.text
        # and the form itself still works
        assert (await sign_in(anyone)).status_code == 303


async def test_a_signed_in_post_without_the_csrf_header_is_bounded_too(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    body = Endless(f"csrf={signed_in.csrf}&id=acc-big&platform=sandbox&".encode())
    response = await signed_in.client.post("/accounts", content=body, headers=FORM)
    assert response.status_code == 413
    assert response.text == "the request is larger than this form takes (64 KiB)"
    assert body.sent <= FORM_BODY_BYTES + CHUNK
    assert not await redis.exists(web_settings.keys.account("acc-big"))
    # with the header the handler reads it: the same bound
    body = Endless(b"id=acc-big&platform=sandbox&")
    headers = {**FORM, "X-CSRF-Token": signed_in.csrf}
    response = await signed_in.client.post("/accounts", content=body, headers=headers)
    assert response.status_code == 413
    assert body.sent <= FORM_BODY_BYTES + CHUNK
    # a normal form still works
    fields = {"csrf": signed_in.csrf, "id": "acc-1", "platform": "sandbox"}
    assert (await signed_in.client.post("/accounts", data=fields)).status_code == 200
    assert await redis.exists(web_settings.keys.account("acc-1"))


async def test_an_import_is_bounded_by_the_upload_limit_and_still_works(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    declared = {
        "Content-Type": "multipart/form-data; boundary=x",
        "Content-Length": str(IMPORT_BODY_BYTES + 1),
        "X-CSRF-Token": signed_in.csrf,
    }
    body = Endless()
    response = await signed_in.client.post("/accounts/import", content=body, headers=declared)
    assert response.status_code == 413
    assert response.text == (
        f"the request is larger than this form takes ({IMPORT_BODY_BYTES // 1024 // 1024} MiB)"
    )
    assert body.sent == 0
    # a file a little over the upload limit is still read, and refused with its name
    big = b"id,platform\n" + b"#" * MAX_UPLOAD_BYTES
    response = await signed_in.client.post(
        "/accounts/import",
        data={"csrf": signed_in.csrf},
        files={"file": ("big.csv", big, "text/csv")},
    )
    assert response.status_code == 422
    assert "big.csv is larger than 16 MiB" in response.text
    # an ordinary import is written
    rows = b"id,platform\nacc-7,sandbox\n"
    response = await signed_in.client.post(
        "/accounts/import",
        data={"csrf": signed_in.csrf},
        files={"file": ("accounts.csv", rows, "text/csv")},
    )
    assert response.status_code == 200, response.text
    assert "added 1" in response.text
    assert await redis.exists(web_settings.keys.account("acc-7"))


async def test_an_over_limit_answer_reaches_an_htmx_form(signed_in: SignedIn) -> None:
    """The 413 sentence is shown where the form was sent (htmx swaps a 413)."""
    page = (await signed_in.client.get("/")).text
    assert '"409|413|422", "swap": true' in page
    response = await signed_in.client.post(
        "/fleet/set",
        data={"csrf": signed_in.csrf, "scope": "all", "changes": "x" * FORM_BODY_BYTES},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 413
    assert response.text == "the request is larger than this form takes (64 KiB)"
