"""The worker's outbox when Redis refuses one of its streams (the key holds another
type): the other streams flow, nothing written is sent twice, and the refused stream's
messages wait aside, bounded, until it takes writes again."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.messages import CrawlBatch, CrawledItem, LoginSuccess, Message, TaskStatus, decode
from hiscrm_bus.resilience import Episode
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import FIELD
from hiscrm_worker import outbox as outbox_module
from hiscrm_worker.outbox import PARK_AFTER, Outbox

Bus = tuple[Redis, BusSettings]


@pytest.fixture
async def outbox(bus: Bus) -> AsyncIterator[Outbox]:
    redis, settings = bus
    box = Outbox(redis, settings, "w1")
    # the ingest stream's key overwritten with a string: every XADD to it is WRONGTYPE
    await redis.set(box.streams["ingest"], "not a stream")
    async with anyio.create_task_group() as tg:
        tg.start_soon(box.run)
        yield box
        tg.cancel_scope.cancel()


def batch(n: int) -> CrawlBatch:
    item = CrawledItem(kind="comment", item_id=str(n), text="hi", created_at=datetime.now(UTC))
    return CrawlBatch(sender="w1", account_id="acc-1", worker_id="w1", items=(item,))


def login() -> LoginSuccess:
    return LoginSuccess(
        sender="w1", account_id="acc-1", worker_id="w1", platform_user_id="1864722759"
    )


def mark(n: int) -> TaskStatus:
    return TaskStatus(
        sender="w1", account_id=f"m{n}", worker_id="w1", state="running", config_version=n
    )


async def arrived(redis: Redis, stream: str, n: int) -> list[Message]:
    """The stream's first ``n`` messages, waiting for them (a blocking XREAD)."""
    got: list[Message] = []
    cursor = "0-0"
    with anyio.fail_after(10):
        while len(got) < n:
            reply = await redis.xread({stream: cursor}, count=n - len(got), block=100)
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    cursor = entry_id.decode()
                    message = decode(fields[FIELD.encode()])
                    assert not isinstance(message, Exception)
                    got.append(message)
    return got


def items(messages: list[Message]) -> list[str]:
    """The item ids of crawl batches, in order."""
    return [i.item_id for m in messages if isinstance(m, CrawlBatch) for i in m.items]


async def test_a_refused_stream_neither_holds_up_nor_duplicates_the_others(
    outbox: Outbox, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    redis, _settings = bus
    first = [batch(0), login(), batch(1)]
    marks = [mark(n) for n in range(4)]
    outbox.send("ingest", first[0])
    outbox.send("events", first[1])
    outbox.send("ingest", first[2])
    assert await arrived(redis, outbox.streams["events"], 1) == [first[1]]
    outbox.send("events", marks[1])
    await outbox.settled()
    assert outbox.parked == 2
    batches = [batch(n) for n in range(2, 50)]
    for b in batches:
        outbox.send("ingest", b)
    outbox.send("events", marks[2])
    # the login once, and what followed it, while the ingest stream refuses every write
    assert await arrived(redis, outbox.streams["events"], 3) == [first[1], *marks[1:3]]
    assert outbox.parked == 50  # waiting aside, not re-sent
    refusals = [r for r in caplog.records if "keeps refusing" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.WARNING

    # repaired: the waiting batches follow, in order, each once
    await redis.delete(outbox.streams["ingest"])
    outbox.send("ingest", batch(50))
    got = await arrived(redis, outbox.streams["ingest"], 51)
    assert items(got) == [str(n) for n in range(51)]
    outbox.send("events", marks[3])
    assert len(await arrived(redis, outbox.streams["events"], 4)) == 4
    assert await redis.xlen(outbox.streams["ingest"]) == 51
    assert len(outbox) == 0


async def test_what_waits_for_a_refused_stream_is_bounded(
    outbox: Outbox, bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    redis, _settings = bus
    monkeypatch.setattr(outbox_module, "PARKED_MAX", 5)
    for n in range(PARK_AFTER):
        outbox.send("ingest", batch(n))
    await outbox.settled()
    for n in range(PARK_AFTER, 20):
        outbox.send("ingest", batch(n))
    assert outbox.parked == 5
    drops = [r for r in caplog.records if "dropped beyond" in r.getMessage()]
    assert len(drops) == 1
    await redis.delete(outbox.streams["ingest"])
    # the newest five, once the stream takes writes again
    got = await arrived(redis, outbox.streams["ingest"], 5)
    assert items(got) == [str(n) for n in range(15, 20)]


async def test_a_refused_task_state_never_overtakes_a_newer_one(bus: Bus) -> None:
    """A task state the events stream refused is tried again only if no newer state of
    its account came meanwhile: the Master never hears an old state last (review)."""
    redis, settings = bus
    box = Outbox(redis, settings, "w1")
    episode = Episode(logging.getLogger("test"), "sending", settings)
    await redis.set(box.streams["events"], "not a stream")
    box.state(mark(1).model_copy(update={"account_id": "acc-1"}))
    await box._send_some(100, episode)  # refused
    box.state(mark(2).model_copy(update={"account_id": "acc-1"}))  # the task moved on
    await redis.delete(box.streams["events"])
    await box._send_some(100, episode)
    entries = await redis.xrange(box.streams["events"])
    sent = [decode(fields[FIELD.encode()]) for _id, fields in entries]
    assert [(m.account_id, m.config_version) for m in sent if isinstance(m, TaskStatus)] == [
        ("acc-1", 2)
    ]
