"""Bounds on decoding, transient error replies, and one log line per outage episode."""

from __future__ import annotations

import logging

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis import exceptions as rexc

from hiscrm_bus.accounts import from_hash
from hiscrm_bus.connection import call, is_transient
from hiscrm_bus.errors import BusUnavailable, InvalidAccountConfig
from hiscrm_bus.limits import MAX_JSON_DEPTH, MAX_MESSAGE_BYTES, TooLarge, clip, depth, loads
from hiscrm_bus.messages import DecodeError, LoginSuccess, decode, encode
from hiscrm_bus.resilience import Episode, every
from tests.conftest import fast_settings


def nested(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 300, 10_000])
def test_deep_json_is_refused_with_a_sentence(levels: int) -> None:
    with pytest.raises(TooLarge, match=f"deeper than {MAX_JSON_DEPTH}"):
        loads(nested(levels), max_bytes=10**6)


def test_json_within_bounds_is_parsed() -> None:
    assert loads(nested(MAX_JSON_DEPTH)) is not None
    assert depth({"a": [1, {"b": []}]}) == 4


def test_oversize_json_is_refused_before_parsing() -> None:
    with pytest.raises(TooLarge, match="bytes"):
        loads('"' + "x" * 100_000 + '"')


@given(st.text(max_size=3000), st.integers(min_value=20, max_value=2500))
def test_clip_never_exceeds_its_limit(text: str, limit: int) -> None:
    clipped = clip(text, limit)
    assert len(clipped) <= limit
    assert clipped == text or len(text) > limit


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("user_info", nested(10_000), "nested deeper than 32"),
        ("user_info", "not json", "not JSON"),
        ("user_info", '{"a":"' + "x" * 70_000 + '"}', "limit 65536"),
        ("name", "x" * 100_000, "at most 200"),
    ],
)
def test_a_poisoned_hash_value_is_an_invalid_config_naming_the_field(
    field: str, value: str, said: str
) -> None:
    raw = {b"id": b"acc-1", b"platform": b"sandbox", field.encode(): value.encode()}
    with pytest.raises(InvalidAccountConfig) as caught:
        from_hash(raw)
    assert field in str(caught.value) and said in str(caught.value)
    assert len(str(caught.value)) <= 1000


def test_decode_refuses_an_oversize_message_unparsed() -> None:
    message = decode(b"x" * (MAX_MESSAGE_BYTES + 1))
    assert isinstance(message, DecodeError) and "limit" in message.reason


def test_decode_refuses_a_deep_profile() -> None:
    ok = LoginSuccess(sender="w1", account_id="a", worker_id="w1", platform_user_id="u")
    deep = encode(ok).replace(b'"user_info":{}', b'"user_info":' + nested(40).encode())
    message = decode(deep)
    assert isinstance(message, DecodeError) and "user_info" in message.reason


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (rexc.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (rexc.ReadOnlyError("You can't write against a read only replica."), True),
        (rexc.ResponseError("BUSY Redis is busy running a script."), True),
        (rexc.ResponseError("MASTERDOWN Link with MASTER is down"), True),
        (rexc.ResponseError("WRONGTYPE Operation against a key"), False),
        (rexc.NoPermissionError("this user has no permissions"), False),
        (rexc.ResponseError("ERR unknown command"), False),
    ],
)
def test_transient_replies_are_outages(exc: Exception, transient: bool) -> None:
    assert is_transient(exc) is transient


async def test_call_turns_an_oom_reply_into_an_outage() -> None:
    async def full() -> None:
        raise rexc.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

    with pytest.raises(BusUnavailable, match="maxmemory"):
        await call(full())


async def test_a_loop_logs_an_outage_once_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = fast_settings("redis://127.0.0.1:1/0", backoff_min_s=0.001, backoff_max_s=0.002)
    log = logging.getLogger("test.loop")
    episode = Episode(log, "test loop", settings)
    calls = 0
    done = anyio.Event()

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls <= 20:
            raise BusUnavailable("Redis cannot serve us right now: OOM")
        if calls == 21:
            raise ValueError("a bug tripped by one value")
        done.set()

    with caplog.at_level(logging.WARNING, logger="test.loop"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(every, 0.001, step, episode)
            with anyio.fail_after(10):
                await done.wait()
            tg.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "OOM" in m]) == 1
    assert len([m for m in messages if "recovered after 21 failure" in m]) == 1
    assert episode.total == 21
