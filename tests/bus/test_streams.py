"""Streams: append with trimming, and a consumer-group reader that never loses an entry,
never lets two consumers process one, and dead-letters what does not decode."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from hiscrm_bus.connection import make_client
from hiscrm_bus.deadletter import DeadLetters
from hiscrm_bus.errors import BusUnavailable
from hiscrm_bus.messages import DecodeError, TaskStatus, decode
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import (
    FIELD,
    Received,
    StreamFollower,
    StreamReader,
    append,
    append_each,
    append_many_to,
)
from tests.conftest import fast_settings
from tests.redis_server import RedisServer

Bus = tuple[Redis, BusSettings]
Handler = Callable[[Any], Awaitable[None]]
GROUP = "masters"


def status(n: int, account: str = "acc-1") -> TaskStatus:
    return TaskStatus(
        sender="w1", account_id=account, worker_id="w1", state="running", config_version=n
    )


def tuned(settings: BusSettings, **changes: Any) -> BusSettings:
    return settings.model_copy(update=changes)


@asynccontextmanager
async def inbox() -> AsyncIterator[tuple[Handler, MemoryObjectReceiveStream[Any]]]:
    """A handler that hands each delivered message to the test, and where to receive it."""
    send, receive = anyio.create_memory_object_stream[Any](10_000)
    async with send, receive:
        yield send.send, receive


async def take(receive: MemoryObjectReceiveStream[Any], n: int, timeout_s: float = 5) -> list[Any]:
    with anyio.fail_after(timeout_s):
        return [await receive.receive() for _ in range(n)]


def reader(
    redis: Redis, settings: BusSettings, consumer: str = "c1", **kwargs: Any
) -> StreamReader:
    kwargs.setdefault("block_ms", 100)
    return StreamReader(
        redis, settings, settings.keys.worker_stream("w1", "events"), GROUP, consumer, **kwargs
    )


async def pending_count(redis: Redis, settings: BusSettings) -> int:
    summary = await redis.xpending(settings.keys.worker_stream("w1", "events"), GROUP)
    return int(summary["pending"])


# -- append -----------------------------------------------------------------------------


async def test_append_stores_the_encoded_message(bus: Bus) -> None:
    redis, settings = bus
    message = status(1)
    entry_id = await append(
        redis, settings.keys.worker_stream("w1", "events"), message, settings.stream_maxlen
    )
    [(got_id, fields)] = await redis.xrange(settings.keys.worker_stream("w1", "events"))
    assert got_id.decode() == entry_id
    assert decode(fields[FIELD.encode()]) == message


async def test_one_refused_stream_is_that_messages_error_alone(bus: Bus) -> None:
    """A stream whose key holds another type refuses its messages; the others of the
    same round trip are written, once, and the caller learns which one failed."""
    redis, settings = bus
    good, bad = (
        settings.keys.worker_stream("w1", "events"),
        settings.keys.worker_stream("w1", "ingest"),
    )
    await redis.set(bad, "not a stream")
    errors = await append_each(redis, [(good, status(1)), (bad, status(2)), (good, status(3))], 100)
    assert [e is None for e in errors] == [True, False, True]
    assert "WRONGTYPE" in str(errors[1])
    assert await redis.xlen(good) == 2
    (alone,) = await append_each(redis, [(bad, status(4))], 100)
    assert alone is not None
    with pytest.raises(ResponseError, match="WRONGTYPE"):  # the caller that wants all: raises
        await append_many_to(redis, [(good, status(5)), (bad, status(6))], 100)


async def test_append_trims_approximately_to_maxlen(real: Bus) -> None:
    redis, settings = real
    ids = [
        await append(redis, settings.keys.worker_stream("w1", "events"), status(i), 100)
        for i in range(1000)
    ]
    length = await redis.xlen(settings.keys.worker_stream("w1", "events"))
    # "~ 100" keeps at least 100 and removes whole nodes, so a little more may stay
    assert 100 <= length < 300
    [(last_id, _fields)] = await redis.xrevrange(
        settings.keys.worker_stream("w1", "events"), count=1
    )
    assert last_id.decode() == ids[-1]
    [(first_id, _fields)] = await redis.xrange(settings.keys.worker_stream("w1", "events"), count=1)
    assert first_id.decode() in ids[-length:]


# -- consumer group ---------------------------------------------------------------------


async def test_group_creation_tolerates_an_existing_group(real: Bus) -> None:
    redis, settings = real
    first = reader(redis, settings, "c1")
    await first.ensure_group()
    await first.ensure_group()
    await reader(redis, settings, "c2").ensure_group()
    groups = await redis.xinfo_groups(settings.keys.worker_stream("w1", "events"))
    assert [g["name"] for g in groups] == [GROUP.encode()]


async def test_a_poisoned_stream_key_does_not_stop_the_others(
    real: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """One worker's stream key overwritten with a string: the reader says so and goes
    on reading every other worker's stream."""
    redis, settings = real
    bad, good = (settings.keys.worker_stream(w, "events") for w in ("w1", "w2"))
    await redis.set(bad, "not a stream")

    async def discover() -> dict[str, str]:
        return {bad: "w1", good: "w2"}

    consumer = StreamReader(redis, settings, None, GROUP, "c1", block_ms=100, discover=discover)
    async with inbox() as (deliver, received), anyio.create_task_group() as tg:

        async def each(batch: list[Received]) -> None:
            for r in batch:
                await deliver((r.source, r.message))

        await tg.start(consumer.run_received, each)
        sent = status(7)
        await append(redis, good, sent, settings.stream_maxlen)
        [(source, message)] = await take(received, 1)
        tg.cancel_scope.cancel()
    assert source == "w2"
    assert message == sent
    assert caplog.text.count("WRONGTYPE") == 1  # said once, not once per pass


async def test_appended_messages_reach_the_handler_and_are_acknowledged(real: Bus) -> None:
    redis, settings = real
    sent = [status(i) for i in range(5)]
    async with inbox() as (handler, receive), anyio.create_task_group() as tg:
        await tg.start(reader(redis, settings).run, handler)
        for message in sent:
            await append(
                redis, settings.keys.worker_stream("w1", "events"), message, settings.stream_maxlen
            )
        assert await take(receive, 5) == sent
        # entries are handled one after another, so once a later one is delivered
        # the earlier ones were acknowledged
        await append(
            redis, settings.keys.worker_stream("w1", "events"), status(99), settings.stream_maxlen
        )
        await take(receive, 1)
        assert await pending_count(redis, settings) <= 1
        tg.cancel_scope.cancel()


async def test_two_consumers_never_process_one_entry(real: Bus) -> None:
    redis, settings = real
    clients = [make_client(settings) for _ in range(2)]
    readers = [
        reader(client, settings, f"master-{i}", count=10) for i, client in enumerate(clients)
    ]
    seen: list[tuple[str, str]] = []
    try:
        async with inbox() as (send_to_test, receive), anyio.create_task_group() as tg:
            for r in readers:

                async def handler(message: Any, name: str = r.consumer) -> None:
                    seen.append((name, message.message_id))
                    await send_to_test(message)

                await tg.start(r.run, handler)
            sent = [status(i) for i in range(200)]
            for message in sent:
                await append(
                    redis,
                    settings.keys.worker_stream("w1", "events"),
                    message,
                    settings.stream_maxlen,
                )
            got = await take(receive, 200, timeout_s=8)
            tg.cancel_scope.cancel()
            with pytest.raises(anyio.WouldBlock):
                receive.receive_nowait()
    finally:
        for client in clients:
            await client.aclose()

    assert Counter(m.message_id for m in got) == Counter(m.message_id for m in sent)
    per_id = Counter(message_id for _consumer, message_id in seen)
    assert set(per_id.values()) == {1}
    # both Masters took a share of the work
    assert {consumer for consumer, _id in seen} == {"master-0", "master-1"}


async def test_reader_rereads_its_own_pending_entries_at_start(real: Bus) -> None:
    redis, settings = real
    settings = tuned(settings, claim_idle_s=60)  # so claiming cannot be what finds them
    me = reader(redis, settings, "c1")
    await me.ensure_group()
    sent = [status(i) for i in range(3)]
    for message in sent:
        await append(
            redis, settings.keys.worker_stream("w1", "events"), message, settings.stream_maxlen
        )
    # a previous life of consumer c1 read them and died before acknowledging
    await redis.xreadgroup(
        GROUP, "c1", {settings.keys.worker_stream("w1", "events"): ">"}, count=10
    )
    assert await pending_count(redis, settings) == 3

    async with inbox() as (handler, receive), anyio.create_task_group() as tg:
        await tg.start(me.run, handler)
        assert await take(receive, 3) == sent
        await append(
            redis, settings.keys.worker_stream("w1", "events"), status(99), settings.stream_maxlen
        )
        assert (await take(receive, 1))[0].config_version == 99
        assert await pending_count(redis, settings) <= 1
        tg.cancel_scope.cancel()


async def test_idle_entries_of_a_dead_consumer_are_claimed(real: Bus) -> None:
    redis, settings = real
    settings = tuned(settings, claim_idle_s=0.2)
    live = reader(redis, settings, "live", block_ms=50)
    await live.ensure_group()
    sent = [status(i) for i in range(3)]
    for message in sent:
        await append(
            redis, settings.keys.worker_stream("w1", "events"), message, settings.stream_maxlen
        )
    await redis.xreadgroup(
        GROUP, "dead", {settings.keys.worker_stream("w1", "events"): ">"}, count=10
    )

    async with inbox() as (handler, receive), anyio.create_task_group() as tg:
        await tg.start(live.run, handler)
        assert sorted(m.config_version for m in await take(receive, 3)) == [0, 1, 2]
        await append(
            redis, settings.keys.worker_stream("w1", "events"), status(99), settings.stream_maxlen
        )
        await take(receive, 1)
        consumers = {
            c["name"].decode(): c["pending"]
            for c in await redis.xinfo_consumers(settings.keys.worker_stream("w1", "events"), GROUP)
        }
        assert consumers["dead"] == 0
        tg.cancel_scope.cancel()


async def test_entries_of_a_live_consumer_are_not_claimed_early(real: Bus) -> None:
    redis, settings = real
    settings = tuned(settings, claim_idle_s=60)
    other = reader(redis, settings, "other")
    await other.ensure_group()
    await append(
        redis, settings.keys.worker_stream("w1", "events"), status(1), settings.stream_maxlen
    )
    await redis.xreadgroup(
        GROUP, "busy", {settings.keys.worker_stream("w1", "events"): ">"}, count=10
    )

    async with inbox() as (handler, receive), anyio.create_task_group() as tg:
        await tg.start(other.run, handler)
        await append(
            redis, settings.keys.worker_stream("w1", "events"), status(2), settings.stream_maxlen
        )
        assert [m.config_version for m in await take(receive, 1)] == [2]
        tg.cancel_scope.cancel()
    consumers = {
        c["name"].decode(): c["pending"]
        for c in await redis.xinfo_consumers(settings.keys.worker_stream("w1", "events"), GROUP)
    }
    assert consumers["busy"] == 1


# -- bad entries and failing handlers ---------------------------------------------------


async def test_garbage_entries_are_dead_lettered_and_reading_goes_on(real: Bus) -> None:
    redis, settings = real
    stream = settings.keys.worker_stream("w1", "events")
    async with inbox() as (handler, receive), anyio.create_task_group() as tg:
        await tg.start(reader(redis, settings).run, handler)
        await redis.xadd(stream, {FIELD: b"\xff garbage"})
        await redis.xadd(stream, {"other": b"no msg field here"})
        await redis.xadd(stream, {FIELD: b'{"type": "worker:task:status", "sender": "w1"}'})
        good = status(7)
        await append(redis, stream, good, settings.stream_maxlen)
        assert await take(receive, 1) == [good]
        tg.cancel_scope.cancel()

    letters = await redis.xrange(settings.keys.deadletter)
    assert len(letters) == 3
    fields = [{k.decode(): v for k, v in f.items()} for _id, f in letters]
    assert {f["source"] for f in fields} == {stream.encode()}
    assert all(f["reason"] for f in fields)
    assert fields[0]["raw"] == b"\xff garbage"
    assert b"msg" in fields[1]["reason"]
    assert b"no msg field here" in fields[1]["raw"]
    assert b"account_id" in fields[2]["reason"]
    counts = await DeadLetters(redis, settings).counts()
    assert counts == {stream: 3}
    # dead-lettered entries are acknowledged: nothing is left to be re-read forever
    assert await pending_count(redis, settings) <= 1


async def test_a_failing_handler_does_not_stop_the_reader(real: Bus) -> None:
    redis, settings = real
    calls: list[int] = []

    async with inbox() as (send_to_test, receive), anyio.create_task_group() as tg:

        async def handler(message: Any) -> None:
            calls.append(message.config_version)
            if message.config_version == 1:
                raise ValueError("a bug in the handler")
            await send_to_test(message)

        await tg.start(reader(redis, settings).run, handler)
        for n in (1, 2):
            await append(
                redis,
                settings.keys.worker_stream("w1", "events"),
                status(n),
                settings.stream_maxlen,
            )
        assert [m.config_version for m in await take(receive, 1)] == [2]
        tg.cancel_scope.cancel()
    # the failing entry was acknowledged, not retried forever
    assert calls == [1, 2]


async def test_a_handler_failing_on_redis_leaves_the_entry_for_a_retry(real: Bus) -> None:
    redis, settings = real
    failed_once = False

    async with inbox() as (send_to_test, receive), anyio.create_task_group() as tg:

        async def handler(message: Any) -> None:
            nonlocal failed_once
            if not failed_once:
                failed_once = True
                raise BusUnavailable("Redis went away mid-handler")
            await send_to_test(message)

        await tg.start(reader(redis, settings).run, handler)
        message = status(1)
        await append(
            redis, settings.keys.worker_stream("w1", "events"), message, settings.stream_maxlen
        )
        assert await take(receive, 1) == [message]
        tg.cancel_scope.cancel()
    assert failed_once


# -- Redis going away -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["delete-stream", "destroy-group"])
async def test_reader_recovers_when_the_stream_or_group_vanishes(real: Bus, how: str) -> None:
    redis, settings = real
    me = reader(redis, settings, block_ms=3000)
    ops = make_client(settings)
    try:
        async with inbox() as (handler, receive), anyio.create_task_group() as tg:
            await tg.start(me.run, handler)
            await append(
                redis,
                settings.keys.worker_stream("w1", "events"),
                status(1),
                settings.stream_maxlen,
            )
            await take(receive, 1)
            # the reader is (or soon is) blocked in XREADGROUP when an operator does this
            if how == "delete-stream":
                await ops.delete(settings.keys.worker_stream("w1", "events"))
            else:
                await ops.xgroup_destroy(settings.keys.worker_stream("w1", "events"), GROUP)
            # the group is recreated from the stream's start, so this entry is delivered
            # whether it lands before or after the re-creation; entries still in the
            # stream may come again (at-least-once)
            await append(
                redis,
                settings.keys.worker_stream("w1", "events"),
                status(100),
                settings.stream_maxlen,
            )
            with anyio.fail_after(8):
                while (await receive.receive()).config_version != 100:
                    pass
            tg.cancel_scope.cancel()
    finally:
        await ops.aclose()


async def test_reader_survives_a_redis_restart(own_redis_server: RedisServer) -> None:
    settings = fast_settings(own_redis_server.url)
    consumer_client = make_client(settings)
    producer = make_client(settings)
    try:
        async with inbox() as (handler, receive), anyio.create_task_group() as tg:
            await tg.start(reader(consumer_client, settings).run, handler)
            before = status(1)
            await append(
                producer,
                settings.keys.worker_stream("w1", "events"),
                before,
                settings.stream_maxlen,
            )
            assert await take(receive, 1) == [before]

            await anyio.to_thread.run_sync(own_redis_server.restart)

            after = status(2)
            await append(
                producer, settings.keys.worker_stream("w1", "events"), after, settings.stream_maxlen
            )
            got = await take(receive, 1, timeout_s=8)
            # at-least-once: the first one may come again if its XACK was cut off
            if got == [before]:
                got = await take(receive, 1, timeout_s=8)
            assert got == [after]
            tg.cancel_scope.cancel()
    finally:
        await consumer_client.aclose()
        await producer.aclose()


async def test_reader_survives_a_redis_crash(own_redis_server: RedisServer) -> None:
    settings = fast_settings(own_redis_server.url)
    consumer_client = make_client(settings)
    try:
        async with inbox() as (handler, receive), anyio.create_task_group() as tg:
            await tg.start(reader(consumer_client, settings).run, handler)
            await anyio.to_thread.run_sync(own_redis_server.kill)
            await anyio.to_thread.run_sync(own_redis_server.start)
            producer = make_client(settings)
            try:
                message = status(3)
                await append(
                    producer,
                    settings.keys.worker_stream("w1", "events"),
                    message,
                    settings.stream_maxlen,
                )
                assert await take(receive, 1, timeout_s=8) == [message]
            finally:
                await producer.aclose()
            tg.cancel_scope.cancel()
    finally:
        await consumer_client.aclose()


async def test_a_follower_reads_what_comes_after_its_cursor_on_every_stream(bus: Bus) -> None:
    redis, settings = bus
    a, b = (settings.keys.worker_stream(w, "events") for w in ("w1", "w2"))
    await append(redis, a, status(1), settings.stream_maxlen)  # before: not seen
    follower = StreamFollower(redis, block_ms=100)
    await follower.start_at_end(a)
    follower.follow(b, "0")
    assert await follower.read() == []
    await append(redis, a, status(2), settings.stream_maxlen)
    await append(redis, b, status(3), settings.stream_maxlen)
    await redis.xadd(b, {"junk": "x"})
    got = await follower.read()
    versions = [(s, getattr(m, "config_version", None)) for s, m in got]
    assert versions[:2] == [(a, 2), (b, 3)] or versions[:2] == [(b, 3), (a, 2)]
    assert isinstance(got[2][1], DecodeError)
    assert await follower.read() == []  # each entry once
