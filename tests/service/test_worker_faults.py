"""A worker's parts that run beside its control loop (logins, crawl batches) facing a
failing Redis or outsized data, driven in-process on the shared bus fixture: what
fails costs only itself, the worker goes on, nothing is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.errors import BusUnavailable
from hiscrm_bus.keys import StreamKind
from hiscrm_bus.messages import LoginFailed, LoginRequest, LoginSuccess, Message
from hiscrm_bus.settings import BusSettings
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_worker.service import Worker
from tests.service.test_delivery import add, worker_settings

Bus = tuple[Redis, BusSettings]


class Sent:
    """What the worker queued for the Master, and an event per login that ended."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.login_ended = anyio.Event()

    def __call__(self, kind: StreamKind, message: Message) -> None:
        self.messages.append(message)
        if isinstance(message, LoginFailed | LoginSuccess):
            self.login_ended.set()

    async def login_end(self) -> LoginFailed | LoginSuccess:
        with anyio.fail_after(10):
            await self.login_ended.wait()
        (end,) = [m for m in self.messages if isinstance(m, LoginFailed | LoginSuccess)]
        return end


@pytest.fixture
async def worker(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Master, Worker, Sent]]:
    """A Master, and worker w1 with its task runner in a task group of its own (as in
    Worker.run), its account acc-1 running; what it sends is captured."""
    redis, settings = bus
    master = Master(
        MasterSettings.model_validate({**settings.model_dump(), "master_id": "m1"}), redis
    )
    w1 = Worker(worker_settings(settings, "w1", tmp_path), redis)
    sent = Sent()
    monkeypatch.setattr(w1.outbox, "send", sent)
    async with anyio.create_task_group() as tg:
        await tg.start(w1.runner.run)
        w1.tg = tg
        await add(master, "acc-1", "w1")
        await w1.reconcile()
        yield master, w1, sent
        tg.cancel_scope.cancel()


async def test_a_login_whose_account_cannot_be_read_fails_alone(worker, bus: Bus) -> None:
    """A Redis error reply at a login's start (a key of another type, NOPERM) ends that
    login with one reason; the worker and its tasks go on (review finding: it ended the
    worker, and the Master's re-sent request the restarted one)."""
    _master, w1, sent = worker
    redis, settings = bus
    key = settings.keys.account("acc-1")
    await redis.delete(key)
    await redis.set(key, "x")
    await w1.handle(LoginRequest(sender="m1", session_id="s1", account_id="acc-1"))
    end = await sent.login_end()
    assert isinstance(end, LoginFailed)
    assert (end.session_id, end.reason) == ("s1", "error")
    assert "could not be read" in end.error and "WRONGTYPE" in end.error
    await anyio.wait_all_tasks_blocked()
    assert w1.tg is not None and not w1.tg.cancel_scope.cancel_called
    assert w1.runner.ids() == ["acc-1"] and w1.logins.active == {}


async def test_a_login_waits_out_a_short_outage(worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis unavailable when a login starts: the read is retried with back-off and the
    login goes on (the synthetic platform then says it has no login page)."""
    _master, w1, sent = worker
    get = w1.logins.store.get
    failures = 2

    async def flaky(account_id: str) -> Any:
        nonlocal failures
        if failures:
            failures -= 1
            raise BusUnavailable("Redis is unreachable: test")
        return await get(account_id)

    monkeypatch.setattr(w1.logins.store, "get", flaky)
    await w1.handle(LoginRequest(sender="m1", session_id="s1", account_id="acc-1"))
    end = await sent.login_end()
    assert isinstance(end, LoginFailed) and end.reason == "unsupported"
    assert failures == 0


async def test_a_login_fails_once_an_outage_outlasts_its_timeout(
    worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    _master, w1, sent = worker

    async def down(account_id: str) -> Any:
        raise BusUnavailable("Redis is unreachable: test")

    monkeypatch.setattr(w1.logins.store, "get", down)
    started = anyio.current_time()
    request = LoginRequest(sender="m1", session_id="s1", account_id="acc-1", timeout_s=0.5)
    await w1.handle(request)
    end = await sent.login_end()
    assert isinstance(end, LoginFailed) and end.reason == "error"
    assert "within 0.5s" in end.error and "unreachable" in end.error
    assert anyio.current_time() - started < 5
    assert w1.runner.ids() == ["acc-1"] and w1.logins.active == {}
