"""The dead-letter stream: what failed, from where, why, and how often; never a crash."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from hiscrm_bus.connection import make_client
from hiscrm_bus.deadletter import DeadLetters
from hiscrm_bus.messages import DecodeError, decode
from hiscrm_bus.settings import BusSettings
from tests.conftest import fast_settings
from tests.redis_server import free_port

Bus = tuple[Redis, BusSettings]


async def test_write_records_source_reason_raw_and_count(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    redis, settings = bus
    letters = DeadLetters(redis, settings)
    error = decode(b"\xff not json")
    assert isinstance(error, DecodeError)
    with caplog.at_level(logging.WARNING, logger="hiscrm_bus.deadletter"):
        await letters.write("hiscrm:worker:w1:control", error)
        await letters.write("hiscrm:worker:w1:control", DecodeError("second", b"x"))
        await letters.write("hiscrm:events", DecodeError("third", b"y"))

    entries = await redis.xrange(settings.keys.deadletter)
    assert len(entries) == 3
    first = {k.decode(): v for k, v in entries[0][1].items()}
    assert first["source"] == b"hiscrm:worker:w1:control"
    assert first["reason"] == error.reason.encode()
    assert first["raw"] == b"\xff not json"
    assert first["raw_len"] == b"10"
    assert first["at"]
    assert await letters.counts() == {"hiscrm:worker:w1:control": 2, "hiscrm:events": 1}
    assert "dead-lettered a message from hiscrm:events: third" in caplog.text


async def test_long_raw_and_reason_are_cut_but_the_length_is_kept(bus: Bus) -> None:
    redis, settings = bus
    settings = settings.model_copy(update={"deadletter_raw_bytes": 64})
    await DeadLetters(redis, settings).write("src", DecodeError("r" * 5000, b"z" * 10_000))
    [(_id, fields)] = await redis.xrange(settings.keys.deadletter)
    assert fields[b"raw"] == b"z" * 64
    assert fields[b"raw_len"] == b"10000"
    assert fields[b"reason"] == b"r" * 1000


async def test_stream_is_trimmed_to_about_maxlen(real: Bus) -> None:
    redis, settings = real
    settings = settings.model_copy(update={"deadletter_maxlen": 10})
    letters = DeadLetters(redis, settings)
    for i in range(500):
        await letters.write("src", DecodeError(f"bad {i}", b"x"))
    assert await redis.xlen(settings.keys.deadletter) < 250
    # the count is of everything ever dead-lettered, not of what is still kept
    assert await letters.counts() == {"src": 500}


async def test_write_never_raises_when_redis_is_gone(caplog: pytest.LogCaptureFixture) -> None:
    settings = fast_settings(f"redis://127.0.0.1:{free_port()}/0", redis_timeout_s=2)
    client = make_client(settings, retries=False)
    try:
        with caplog.at_level(logging.ERROR, logger="hiscrm_bus.deadletter"):
            await DeadLetters(client, settings).write("src", DecodeError("bad", b"x"))
    finally:
        await client.aclose()
    assert "could not write the dead letter from src" in caplog.text
