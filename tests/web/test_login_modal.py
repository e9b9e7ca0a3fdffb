"""The QR login modal: "Log in" starts the login through the account's worker and the
modal follows it by server-sent events, against a real redis-server, a real Master in
process and an in-process fake of the worker side (it listens on its control channel
and writes to its streams what a worker's login and config updates write)."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from redis.asyncio import Redis
from starlette.applications import Starlette

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_bus.messages import (
    AccountConfigUpdate,
    AccountConfigUpdateAck,
    DecodeError,
    LoginFailed,
    LoginProgress,
    LoginQrCode,
    LoginRequest,
    LoginSuccess,
    Message,
    decode,
)
from hiscrm_bus.streams import append
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_web import logins
from hiscrm_web.app import COOKIE
from hiscrm_web.settings import WebSettings
from tests.web.conftest import SignedIn

pytestmark = pytest.mark.real

PNG = b"\x89PNG\r\n\x1a\n-a-qr-code-"
_CONNECT = re.compile(r'sse-connect="([^"]+)"')


class FakeWorker:
    """Worker ``w1`` as the bus sees it: alive in the registry, subscribed to its
    control channel; it acknowledges config updates as applied, and the test says what
    its login does (``qr``, ``scanned``, ``success``, ``failed``)."""

    def __init__(self, redis: Redis, settings: WebSettings, worker_id: str = "w1") -> None:
        self.redis = redis
        self.settings = settings
        self.id = worker_id
        self.requests: list[LoginRequest] = []
        self.asked = anyio.Event()

    async def heartbeat(self) -> None:
        info = WorkerInfo(id=self.id, platforms=("sandbox",), capacity=10)
        await WorkerRegistry(self.redis, self.settings.keys).heartbeat(info, ttl_s=60)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        pubsub = self.redis.pubsub()
        try:
            await pubsub.subscribe(self.settings.keys.control(self.id))
            task_status.started()
            async for raw in pubsub.listen():
                if raw["type"] == "message":
                    await self.handle(decode(raw["data"]))
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def handle(self, message: Message | DecodeError) -> None:
        if isinstance(message, LoginRequest):
            self.requests.append(message)
            self.asked.set()
        elif isinstance(message, AccountConfigUpdate):
            ack = AccountConfigUpdateAck(
                sender=self.id,
                update_id=message.update_id,
                account_id=message.account_id,
                worker_id=self.id,
                applied_version=message.config_version,
                seen_version=message.config_version,
                ok=True,
            )
            await self.send("acks", ack)

    async def send(self, kind: str, message: Message) -> None:
        stream = self.settings.keys.worker_stream(self.id, kind)  # type: ignore[arg-type]
        await append(self.redis, stream, message, maxlen=1000)

    async def request(self) -> LoginRequest:
        with anyio.fail_after(10):
            await self.asked.wait()
        return self.requests[-1]

    def _about(self, request: LoginRequest) -> dict[str, str]:
        return {
            "sender": self.id,
            "session_id": request.session_id,
            "account_id": request.account_id,
            "worker_id": self.id,
        }

    async def qr(self, refresh: int = 0) -> None:
        png = base64.b64encode(PNG + bytes([refresh])).decode()
        about = self._about(await self.request())
        await self.send("events", LoginQrCode(**about, png_b64=png, refresh=refresh))

    async def scanned(self) -> None:
        about = self._about(await self.request())
        await self.send("events", LoginProgress(**about, status="scanned"))

    async def success(self, user_id: str, nickname: str) -> None:
        about = self._about(await self.request())
        info = {"nickname": nickname}
        await self.send("events", LoginSuccess(**about, platform_user_id=user_id, user_info=info))

    async def failed(self, reason: Any, error: str) -> None:
        about = self._about(await self.request())
        await self.send("events", LoginFailed(**about, reason=reason, error=error))


@dataclass
class Fleet:
    redis: Redis
    settings: WebSettings
    worker: FakeWorker
    store: AccountStore


@pytest.fixture
async def fleet(web_settings: WebSettings) -> AsyncIterator[Fleet]:
    """Worker w1 (fake) alive and listening, a Master reading the workers' events and
    ACKs in process (its handlers of them, nothing else: no placement), and accounts
    acc-1 on w1, acc-2 on no worker and acc-3 on w9 (offline)."""
    redis = Redis.from_url(web_settings.redis_url)
    values = web_settings.model_dump(include=set(MasterSettings.model_fields))
    master = Master(MasterSettings.model_validate({**values, "master_id": "m1"}), redis)
    try:
        worker = FakeWorker(redis, web_settings)
        store = AccountStore(redis, web_settings.keys)
        await worker.heartbeat()
        await store.create(AccountConfig(id="acc-1", platform="sandbox", worker_id="w1"))
        await store.create(AccountConfig(id="acc-2", platform="sandbox"))
        await store.create(AccountConfig(id="acc-3", platform="sandbox", worker_id="w9"))
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            await tg.start(master.events.run_received, master.on_events)
            await tg.start(master.acks.run_received, master.on_acks)
            yield Fleet(redis, web_settings, worker, store)
            tg.cancel_scope.cancel()
    finally:
        await master.archive.close()
        await redis.aclose()


@dataclass
class Event:
    name: str
    data: str


@dataclass
class EventStream:
    """A server-sent event stream read as the app sends it."""

    status: int
    chunks: anyio.abc.ObjectReceiveStream[bytes]
    buffer: str = ""
    ended: bool = False
    seen: list[Event] = field(default_factory=list)

    async def next(self) -> Event | None:
        """The next event (within 10 s), or None once the stream ended."""
        with anyio.fail_after(10):
            while "\n\n" not in self.buffer:
                try:
                    self.buffer += (await self.chunks.receive()).decode()
                except anyio.EndOfStream:
                    self.ended = True
                    assert not self.buffer.strip(), self.buffer
                    return None
        raw, self.buffer = self.buffer.split("\n\n", 1)
        name, data = "message", []
        for line in raw.splitlines():
            key, _, value = line.partition(": ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
        event = Event(name, "\n".join(data))
        self.seen.append(event)
        return event

    async def until(self, name: str) -> Event:
        while (event := await self.next()) is not None:
            if event.name == name:
                return event
        raise AssertionError(f"no {name!r} event in {self.seen}")

    async def rest(self) -> list[Event]:
        """Every event up to the stream's end."""
        out = []
        while (event := await self.next()) is not None:
            out.append(event)
        return out


@asynccontextmanager
async def events_of(app: Starlette, client: SignedIn, path: str) -> AsyncIterator[EventStream]:
    """GET ``path`` on the app in process, its body read as it is sent (httpx's ASGI
    transport hands over a body only once it is whole). Leaving the block goes away
    as a closed browser tab does (http.disconnect), and waits until the app stopped."""
    cookie = f"{COOKIE}={client.client.cookies[COOKIE]}".encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"cookie", cookie)],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "root_path": "",
    }
    send_chunk, chunks = anyio.create_memory_object_stream[bytes](100)
    started = anyio.Event()
    gone = anyio.Event()
    status: list[int] = []
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
            started.set()
        elif message["type"] == "http.response.body":
            if message.get("body"):
                await send_chunk.send(message["body"])
            if not message.get("more_body", False):
                send_chunk.close()

    stopped = anyio.Event()

    async def serve() -> None:
        try:
            async with send_chunk:
                await app(scope, receive, send)  # type: ignore[arg-type]
        finally:
            stopped.set()

    async with chunks, anyio.create_task_group() as tg:
        tg.start_soon(serve)
        with anyio.fail_after(10):
            await started.wait()
        yield EventStream(status[0], chunks)
        gone.set()
        with anyio.fail_after(10):  # the app stops when the client goes
            await stopped.wait()


async def press_log_in(client: SignedIn, account_id: str) -> str:
    """What "Log in" swaps into ``#modal``."""
    response = await client.client.post(
        f"/accounts/{account_id}/login",
        headers={"X-CSRF-Token": client.csrf, "HX-Request": "true"},
    )
    assert response.status_code == 200, response.text
    return response.text


def connect_url(modal: str) -> str:
    found = _CONNECT.search(modal)
    assert found, modal
    return found.group(1)


def text_of(fragment: str) -> str:
    """What a browser shows of an HTML fragment."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", fragment)).strip())


async def test_the_modal_shows_the_qr_code_then_the_scan_then_the_applied_login(
    app: Starlette, signed_in: SignedIn, fleet: Fleet
) -> None:
    modal = await press_log_in(signed_in, "acc-1")
    assert 'class="modal"' in modal and 'id="modal-close"' in modal
    assert 'hx-ext="sse"' in modal and 'img class="qr"' in modal
    assert "waiting for the worker…" in text_of(modal)
    url = connect_url(modal)
    request = await fleet.worker.request()
    assert request.account_id == "acc-1" and request.session_id in url

    async with events_of(app, signed_in, url) as events:
        assert events.status == 200
        await fleet.worker.qr()
        qr = await events.next()
        assert qr is not None and qr.name == "qr"
        png = base64.b64encode(PNG + b"\x00").decode()
        assert f'<img class="qr" src="data:image/png;base64,{png}"' in qr.data
        assert await events.next() == Event("status", "scan the QR code with the app")

        await fleet.worker.qr(refresh=1)
        refreshed = await events.until("qr")
        assert base64.b64encode(PNG + b"\x01").decode() in refreshed.data
        assert "QR refreshed (1)" in text_of(refreshed.data)

        await fleet.worker.scanned()
        assert await events.until("status") == Event("status", "scan the QR code with the app")
        assert await events.until("status") == Event("status", "scanned: confirm on your phone")

        await fleet.worker.success("1864722759", "小王")
        logged_in = await events.until("status")
        assert logged_in.data == "logged in as 小王 (platform_user_id 1864722759)"
        waiting = await events.until("applied")
        assert waiting.data == "waiting for the worker to apply it…"
        # the Master saves the login as version 2 and sends it; the worker applies it
        applied = await events.until("applied")
        shown = text_of(applied.data)
        assert re.fullmatch(
            r"platform_user_id applied in \d+ ms without a restart \(version 2 by worker w1\)",
            shown,
        ), shown
        assert [e.name for e in await events.rest()] == ["done"]
        assert events.ended

    account = await fleet.store.get("acc-1")
    assert (account.platform_user_id, account.login_status) == ("1864722759", "logged_in")
    assert len(fleet.worker.requests) == 1  # heard from at once: never re-sent

    # a reconnect (the browser's, after a dropped connection) replays the same login
    async with events_of(app, signed_in, url) as again:
        replayed = await again.rest()
    assert [e.name for e in replayed] == [
        *("qr", "status", "qr", "status", "status"),
        *("status", "applied", "applied", "done"),
    ]
    assert replayed[-2] == applied


async def test_a_nickname_and_an_error_with_markup_arrive_as_text(
    app: Starlette, signed_in: SignedIn, fleet: Fleet
) -> None:
    url = connect_url(await press_log_in(signed_in, "acc-1"))
    async with events_of(app, signed_in, url) as events:
        await fleet.worker.success("42", '<script>alert("x")</script><b>fan</b>')
        logged_in = await events.until("status")
    assert "<script>" not in logged_in.data and "<b>" not in logged_in.data
    assert logged_in.data == (
        "logged in as &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&lt;b&gt;fan&lt;/b&gt; "
        "(platform_user_id 42)"
    )

    fleet.worker.asked = anyio.Event()
    url = connect_url(await press_log_in(signed_in, "acc-1"))
    async with events_of(app, signed_in, url) as events:
        await fleet.worker.failed("error", "<img src=x onerror=alert(1)>")
        failed = await events.until("failed")
    assert "<img" not in failed.data
    assert "login failed: error (&lt;img src=x onerror=alert(1)&gt;)" in failed.data


async def test_an_expired_qr_code_says_to_press_log_in_again_and_the_stream_ends(
    app: Starlette, signed_in: SignedIn, fleet: Fleet
) -> None:
    url = connect_url(await press_log_in(signed_in, "acc-1"))
    async with events_of(app, signed_in, url) as events:
        await fleet.worker.qr()
        await fleet.worker.failed("expired", "the QR code expired 3 times")
        rest = await events.rest()
    assert [e.name for e in rest] == ["qr", "status", "failed", "done"]
    shown = text_of(rest[2].data)
    assert shown.startswith("login failed: expired (the QR code expired 3 times)")
    assert "press Log in again" in shown
    assert (await fleet.store.get("acc-1")).login_status == "not_logged_in"


async def test_a_success_without_a_user_id_is_a_failure_not_a_wait(
    app: Starlette, signed_in: SignedIn, fleet: Fleet
) -> None:
    url = connect_url(await press_log_in(signed_in, "acc-1"))
    async with events_of(app, signed_in, url) as events:
        await fleet.worker.success("  ", "fan")
        rest = await events.rest()
    assert [e.name for e in rest] == ["failed", "done"]
    shown = text_of(rest[0].data)
    assert shown == (
        "login failed: no platform user id "
        "The platform did not say who logged in: press Log in again."
    )
    assert (await fleet.store.get("acc-1")).platform_user_id is None


async def test_a_worker_that_goes_offline_mid_login_ends_it_with_what_to_do(
    app: Starlette,
    signed_in: SignedIn,
    fleet: Fleet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logins, "WATCH_S", 0.1)
    url = connect_url(await press_log_in(signed_in, "acc-1"))
    async with events_of(app, signed_in, url) as events:
        await fleet.worker.qr()
        await events.until("qr")
        # its heartbeat expires, as a killed worker's does
        await fleet.redis.delete(fleet.settings.keys.worker("w1"))
        failed = await events.until("failed")
        assert [e.name for e in await events.rest()] == ["done"]
    shown = text_of(failed.data)
    assert shown.startswith("login failed: worker offline (worker w1 of account acc-1 went")
    assert "Start the worker (hiscrm worker --id w1), then press Log in again." in shown


async def test_a_worker_that_never_answers_cannot_keep_the_stream_open(
    app: Starlette,
    signed_in: SignedIn,
    fleet: Fleet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logins, "LOGIN_TIMEOUT_S", 2.0)
    monkeypatch.setattr(logins, "END_MARGIN_S", 0.5)
    monkeypatch.setattr(logins, "WATCH_S", 0.2)
    url = connect_url(await press_log_in(signed_in, "acc-1"))
    async with events_of(app, signed_in, url) as events:
        rest = await events.rest()
    assert [e.name for e in rest] == ["failed", "done"]
    shown = text_of(rest[0].data)
    assert shown.startswith("login failed: timed out (the worker reported no end in 2.5 s)")
    assert "Is worker w1 running?" in shown
    # unanswered, the request was re-sent (pub/sub may lose one)
    assert len(fleet.worker.requests) >= 2
    assert {r.session_id for r in fleet.worker.requests} == {fleet.worker.requests[0].session_id}


async def test_a_closed_tab_stops_the_stream(
    app: Starlette, signed_in: SignedIn, fleet: Fleet
) -> None:
    url = connect_url(await press_log_in(signed_in, "acc-1"))
    async with events_of(app, signed_in, url) as events:
        await fleet.worker.qr()
        await events.until("qr")
    # leaving the block went away and waited (at most 10 s) for the app to stop: the
    # login still runs on the worker (120 s), its stream does not
    assert not events.ended


@pytest.mark.parametrize(
    ("account_id", "why", "todo"),
    [
        ("ghost", "no account 'ghost'", "Add the account on the fleet page first."),
        (
            "acc-2",
            "account acc-2 has no worker yet; is a Master running?",
            "Start a Master (hiscrm master) to place it on a worker, or move it to one.",
        ),
        (
            "acc-3",
            "worker w9 of account acc-3 is offline; start it first",
            "Start the worker (hiscrm worker --id w9), then press Log in again.",
        ),
    ],
)
async def test_a_login_that_cannot_start_says_why_and_what_to_do(
    signed_in: SignedIn,
    fleet: Fleet,
    monkeypatch: pytest.MonkeyPatch,
    account_id: str,
    why: str,
    todo: str,
) -> None:
    monkeypatch.setattr(logins, "PLACEMENT_WAIT_S", 0.0)
    modal = await press_log_in(signed_in, account_id)
    shown = text_of(modal)
    assert 'class="modal"' in modal and 'id="modal-close"' in modal
    assert "sse-connect" not in modal  # nothing to follow
    assert f"login unavailable: {why}" in shown
    assert todo in shown
    assert not fleet.worker.requests


async def test_markup_in_an_unknown_account_id_is_shown_as_text(
    signed_in: SignedIn, fleet: Fleet
) -> None:
    modal = await press_log_in(signed_in, "%3Cscript%3Ex")
    assert "<script>" not in modal
    assert "&lt;script&gt;x" in modal


async def test_a_login_is_followed_only_under_its_own_account(
    app: Starlette, signed_in: SignedIn, fleet: Fleet
) -> None:
    url = connect_url(await press_log_in(signed_in, "acc-1"))
    session_id = url.split("/")[-2]
    for path in (
        f"/accounts/acc-3/login/{session_id}/events",
        "/accounts/acc-1/login/not-a-session/events",
    ):
        response = await signed_in.client.get(path)
        assert response.status_code == 404, path
        assert response.text.startswith("no such login of account")


async def test_the_close_button_empties_the_modal(signed_in: SignedIn, fleet: Fleet) -> None:
    modal = await press_log_in(signed_in, "acc-3")
    assert 'hx-get="/modal/close" hx-target="#modal"' in modal
    response = await signed_in.client.get("/modal/close", headers={"HX-Request": "true"})
    assert (response.status_code, response.text) == (200, "")
