"""The control subscription: delivers, survives every way a connection can die, reconciles
after each (re)subscribe, and never lets a bad message or a bad handler stop it."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Self

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.connection import make_client
from hiscrm_bus.control import ControlSubscription, publish
from hiscrm_bus.deadletter import DeadLetters
from hiscrm_bus.errors import BusUnavailable
from hiscrm_bus.messages import Message, TaskStatus
from hiscrm_bus.settings import BusSettings
from tests.conftest import fast_settings
from tests.redis_server import RedisServer
from tests.tcp_proxy import tcp_proxy

Bus = tuple[Redis, BusSettings]


def note(n: int) -> TaskStatus:
    return TaskStatus(
        sender="master-1", account_id="acc-1", worker_id="w1", state="running", config_version=n
    )


class Probe:
    """The subscription's handler and reconcile hook, observable by the test."""

    def __init__(self) -> None:
        self.subscribed = 0
        self._subscribed_changed = anyio.Event()
        self._send, self.inbox = anyio.create_memory_object_stream[Message](100)
        self.fail_handler_on: set[int] = set()
        self.reconcile_errors: list[BaseException] = []

    async def handler(self, message: Message) -> None:
        assert isinstance(message, TaskStatus)
        if message.config_version in self.fail_handler_on:
            raise RuntimeError(f"handler bug on {message.config_version}")
        await self._send.send(message)

    async def on_subscribed(self) -> None:
        self.subscribed += 1
        self._subscribed_changed.set()
        self._subscribed_changed = anyio.Event()
        if self.reconcile_errors:
            raise self.reconcile_errors.pop(0)

    async def wait_subscribed(self, n: int, timeout_s: float = 8) -> None:
        with anyio.fail_after(timeout_s):
            while self.subscribed < n:
                await self._subscribed_changed.wait()

    async def next(self, timeout_s: float = 5) -> TaskStatus:
        with anyio.fail_after(timeout_s):
            message = await self.inbox.receive()
        assert isinstance(message, TaskStatus)
        return message

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self._send.close()
        self.inbox.close()


def subscription(redis: Redis, settings: BusSettings, probe: Probe) -> ControlSubscription:
    return ControlSubscription(
        settings, "w1", probe.handler, probe.on_subscribed, DeadLetters(redis, settings)
    )


async def test_published_messages_reach_the_handler(real: Bus) -> None:
    redis, settings = real
    async with Probe() as probe, anyio.create_task_group() as tg:
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        # readiness means subscribed and reconciled once
        assert (probe.subscribed, sub.subscriptions) == (1, 1)
        assert await publish(redis, settings, "w2", note(0)) == 0  # someone else's channel
        for n in (1, 2, 3):
            assert await publish(redis, settings, "w1", note(n)) == 1
        assert [(await probe.next()).config_version for _ in range(3)] == [1, 2, 3]
        assert probe.subscribed == 1
        tg.cancel_scope.cancel()


async def test_resubscribes_and_reconciles_after_the_connection_is_killed(real: Bus) -> None:
    redis, settings = real
    async with Probe() as probe, anyio.create_task_group() as tg:
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        assert await redis.client_kill_filter(_type="pubsub") >= 1
        await probe.wait_subscribed(2)
        assert sub.subscriptions == 2
        assert await publish(redis, settings, "w1", note(1)) == 1
        assert (await probe.next()).config_version == 1
        # and again: it keeps doing so
        assert await redis.client_kill_filter(_type="pubsub") >= 1
        await probe.wait_subscribed(3)
        await publish(redis, settings, "w1", note(2))
        assert (await probe.next()).config_version == 2
        tg.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["restart", "crash"])
async def test_resubscribes_after_redis_restarts(own_redis_server: RedisServer, how: str) -> None:
    settings = fast_settings(own_redis_server.url)
    redis = make_client(settings)
    try:
        async with Probe() as probe, anyio.create_task_group() as tg:
            await tg.start(subscription(redis, settings, probe).run)
            if how == "restart":
                await anyio.to_thread.run_sync(own_redis_server.restart)
            else:
                await anyio.to_thread.run_sync(own_redis_server.kill)
                await anyio.to_thread.run_sync(own_redis_server.start)
            await probe.wait_subscribed(2)
            assert await publish(redis, settings, "w1", note(1)) == 1
            assert (await probe.next()).config_version == 1
            tg.cancel_scope.cancel()
    finally:
        await redis.aclose()


async def test_garbage_is_dead_lettered_and_the_next_message_handled(real: Bus) -> None:
    redis, settings = real
    channel = settings.keys.control("w1")
    async with Probe() as probe, anyio.create_task_group() as tg:
        await tg.start(subscription(redis, settings, probe).run)
        await redis.publish(channel, b"\xff garbage")
        await redis.publish(channel, note(0).model_dump_json()[:-1] + ', "bogus": true}')
        await publish(redis, settings, "w1", note(1))
        # messages on one channel are handled in order, so both letters are written now
        assert (await probe.next()).config_version == 1
        assert probe.subscribed == 1
        tg.cancel_scope.cancel()
    letters = await redis.xrange(settings.keys.deadletter)
    assert [f[b"source"] for _id, f in letters] == [channel.encode()] * 2
    assert letters[0][1][b"raw"] == b"\xff garbage"
    assert b"bogus" in letters[1][1][b"reason"]
    assert await DeadLetters(redis, settings).counts() == {channel: 2}


async def test_a_failing_handler_does_not_stop_the_subscription(real: Bus) -> None:
    redis, settings = real
    async with Probe() as probe, anyio.create_task_group() as tg:
        probe.fail_handler_on = {1}
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        await publish(redis, settings, "w1", note(1))
        await publish(redis, settings, "w1", note(2))
        assert (await probe.next()).config_version == 2
        assert sub.subscriptions == 1  # it did not even reconnect
        tg.cancel_scope.cancel()


async def test_a_failing_reconcile_does_not_stop_the_subscription(real: Bus) -> None:
    redis, settings = real
    async with Probe() as probe, anyio.create_task_group() as tg:
        probe.reconcile_errors = [RuntimeError("reconcile bug")]
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        await publish(redis, settings, "w1", note(1))
        assert (await probe.next()).config_version == 1
        assert sub.subscriptions == 1
        tg.cancel_scope.cancel()


async def test_a_reconcile_that_loses_redis_subscribes_again(real: Bus) -> None:
    redis, settings = real
    async with Probe() as probe, anyio.create_task_group() as tg:
        probe.reconcile_errors = [BusUnavailable("lost Redis while reconciling")]
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        # readiness waits for a reconcile that succeeded
        assert (probe.subscribed, sub.subscriptions) == (2, 2)
        await publish(redis, settings, "w1", note(1))
        assert (await probe.next()).config_version == 1
        tg.cancel_scope.cancel()


# -- connections that die without telling anyone ----------------------------------------


def silent_settings(proxy_url: str, redis_url: str) -> BusSettings:
    base = fast_settings(redis_url)
    return base.model_copy(
        update={
            "redis_url": proxy_url,
            "ping_interval_s": 0.3,
            "ping_timeout_s": 0.3,
            "redis_timeout_s": 2,
        }
    )


async def test_a_silently_dead_connection_is_found_by_ping(real: Bus) -> None:
    redis, base = real
    port = redis.connection_pool.connection_kwargs["port"]
    async with tcp_proxy(port) as proxy, Probe() as probe, anyio.create_task_group() as tg:
        settings = silent_settings(proxy.url, base.redis_url)
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        await publish(redis, settings, "w1", note(1))
        assert (await probe.next()).config_version == 1

        assert proxy.blackhole_existing() == 1
        # Redis still counts the subscriber; the message vanishes on the dead path
        assert await publish(redis, settings, "w1", note(2)) == 1
        # the subscription's own PING deadline notices, it reconnects and reconciles
        # (the reconcile is what finds what was published meanwhile)
        with anyio.fail_after(5):
            await probe.wait_subscribed(2)
        assert proxy.accepted == 2
        await publish(redis, settings, "w1", note(3))
        assert (await probe.next()).config_version == 3
        tg.cancel_scope.cancel()


async def test_reconnecting_over_a_dead_path_does_not_hang(real: Bus) -> None:
    redis, base = real
    port = redis.connection_pool.connection_kwargs["port"]
    async with tcp_proxy(port) as proxy, Probe() as probe, anyio.create_task_group() as tg:
        settings = silent_settings(proxy.url, base.redis_url)
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)

        # the whole path goes dark: the live connection and every new one
        proxy.blackhole_all()
        with anyio.fail_after(5):
            await proxy.wait_accepted(3)  # it noticed, and even a retry got nowhere
        assert probe.subscribed == 1
        proxy.restore_new()
        # the attempt stuck on a dark connection must give up on its own deadline
        with anyio.fail_after(5):
            await probe.wait_subscribed(2)
        await publish(redis, settings, "w1", note(1))
        assert (await probe.next()).config_version == 1
        tg.cancel_scope.cancel()


async def test_an_outage_is_told_in_two_lines_however_many_tries_it_takes(
    real: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    redis, base = real
    port = redis.connection_pool.connection_kwargs["port"]
    async with tcp_proxy(port) as proxy, Probe() as probe, anyio.create_task_group() as tg:
        settings = silent_settings(proxy.url, base.redis_url)
        sub = subscription(redis, settings, probe)
        await tg.start(sub.run)
        caplog.clear()
        caplog.set_level(logging.DEBUG, logger="hiscrm_bus.control")
        proxy.blackhole_all()
        with anyio.fail_after(8):
            await proxy.wait_accepted(4)  # the loss, then three more tries in the dark
        proxy.restore_new()
        await probe.wait_subscribed(2)
        tg.cancel_scope.cancel()
    told = [
        r.getMessage()
        for r in caplog.records
        if r.name == "hiscrm_bus.control" and r.levelno >= logging.WARNING
    ]
    assert len(told) == 2, told
    assert "no PONG" in told[0]
    assert "recovered after" in told[1]


async def test_starting_on_a_dead_path_waits_until_it_comes_back(real: Bus) -> None:
    redis, base = real
    port = redis.connection_pool.connection_kwargs["port"]
    async with tcp_proxy(port) as proxy, Probe() as probe, anyio.create_task_group() as tg:
        settings = silent_settings(proxy.url, base.redis_url)
        proxy.blackhole_all()
        sub = subscription(redis, settings, probe)

        async def start() -> None:
            await tg.start(sub.run)

        with anyio.fail_after(8):
            async with anyio.create_task_group() as starter:
                starter.start_soon(start)
                await proxy.wait_accepted(2)  # tried, and tried again
                assert probe.subscribed == 0
                proxy.restore_new()
        assert probe.subscribed == 1
        await publish(redis, settings, "w1", note(1))
        assert (await probe.next()).config_version == 1
        tg.cancel_scope.cancel()


async def test_messages_that_arrive_together_reach_the_burst_handler_in_one_call(
    real: Bus,
) -> None:
    """While one message is being handled, what arrives meanwhile waits in the
    connection's buffer and is handed over in one call, in order, bad ones dead-lettered."""
    redis, settings = real
    calls: list[list[int]] = []
    first_in, release = anyio.Event(), anyio.Event()
    got_all = anyio.Event()

    async def burst(messages: list[Message]) -> None:
        calls.append([m.config_version for m in messages])  # type: ignore[union-attr]
        if len(calls) == 1:
            first_in.set()
            await release.wait()
        if sum(map(len, calls)) == 6:
            got_all.set()

    async def never(_message: Message) -> None:
        raise AssertionError("with a burst handler, the single handler is not called")

    async def nothing() -> None:
        return None

    sub = ControlSubscription(
        settings, "w1", never, nothing, DeadLetters(redis, settings), burst=burst
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sub.run)
        await publish(redis, settings, "w1", note(1))
        with anyio.fail_after(5):
            await first_in.wait()
        for n in range(2, 7):
            await publish(redis, settings, "w1", note(n))
        await redis.publish(settings.keys.control("w1"), b"not a message")
        release.set()
        with anyio.fail_after(5):
            await got_all.wait()
        tg.cancel_scope.cancel()
    assert calls == [[1], [2, 3, 4, 5, 6]]
    assert await DeadLetters(redis, settings).counts() == {settings.keys.control("w1"): 1}
