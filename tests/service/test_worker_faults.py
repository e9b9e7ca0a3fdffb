"""A worker's parts that run beside its control loop (logins, crawl batches) facing a
failing Redis or outsized data, driven in-process on the shared bus fixture: what
fails costs only itself, the worker goes on, nothing is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.errors import BusUnavailable
from hiscrm_bus.keys import StreamKind
from hiscrm_bus.limits import MAX_MESSAGE_BYTES
from hiscrm_bus.messages import (
    MAX_ITEM_TEXT,
    CrawlBatch,
    CrawledItem,
    DecodeError,
    LoginFailed,
    LoginRequest,
    LoginSuccess,
    Message,
    decode,
    encode,
)
from hiscrm_bus.settings import BusSettings
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_worker.service import INGEST_BATCH, Worker
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


def item(n: int, text: str) -> CrawledItem:
    return CrawledItem(kind="dm", item_id=str(n), text=text, created_at=datetime.now(UTC))


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (INGEST_BATCH, "好" * 1500),  # the review's 4.6 MB batch
        (INGEST_BATCH, "好" * MAX_ITEM_TEXT),  # the longest items, 3 bytes a character
        (100, "\x01" * MAX_ITEM_TEXT),  # 6 bytes a character as JSON
    ],
    ids=["cjk-1500", "cjk-max", "escaped-max"],
)
async def test_a_crawl_of_long_items_reaches_the_master_whole(
    worker, count: int, text: str
) -> None:
    """Every batch a crawl of long items makes is one the Master can decode, and
    together they carry every item, in order (review finding: the whole batch was
    dead-lettered)."""
    _master, w1, sent = worker
    task = w1.runner.get("acc-1")
    assert task is not None
    items = [item(n, text) for n in range(count)]
    w1._on_items(task, items)
    batches = [m for m in sent.messages if isinstance(m, CrawlBatch)]
    assert len(batches) > 1
    received = []
    for batch in batches:
        raw = encode(batch)
        assert len(raw) <= MAX_MESSAGE_BYTES
        decoded = decode(raw)
        assert not isinstance(decoded, DecodeError) and isinstance(decoded, CrawlBatch)
        received.extend(decoded.items)
    assert [i.item_id for i in received] == [str(n) for n in range(count)]
    assert all(i.text == text for i in received)


async def test_an_item_too_large_alone_is_sent_without_its_extra_fields(worker) -> None:
    _master, w1, sent = worker
    task = w1.runner.get("acc-1")
    assert task is not None
    huge = CrawledItem(
        kind="comment",
        item_id="big",
        text="kept",
        created_at=datetime.now(UTC),
        extra={"blob": "x" * MAX_MESSAGE_BYTES},
    )
    w1._on_items(task, [item(0, "before"), huge, item(1, "after")])
    batches = [m for m in sent.messages if isinstance(m, CrawlBatch)]
    assert all(not isinstance(decode(encode(b)), DecodeError) for b in batches)
    received = [i for b in batches for i in b.items]
    assert [(i.item_id, i.text, i.extra) for i in received] == [
        ("0", "before", {}),
        ("big", "kept", {}),
        ("1", "after", {}),
    ]
