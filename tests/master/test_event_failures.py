"""One message the Master cannot handle costs that message alone: the rest of its read
is handled, it is dead-lettered with why, and a Redis outage leaves the read pending."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.errors import BusUnavailable
from hiscrm_bus.limits import MAX_VERSION
from hiscrm_bus.messages import (
    AccountConfigUpdateAck,
    LoginExpired,
    LoginQrCode,
    LoginSuccess,
    Message,
)
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import Received
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings

Bus = tuple[Redis, BusSettings]


@pytest.fixture
async def master(bus: Bus) -> AsyncIterator[Master]:
    redis, settings = bus
    master = Master(
        MasterSettings.model_validate({**settings.model_dump(), "master_id": "m1"}), redis
    )
    for account_id in ("acc-1", "acc-2"):
        await master.store.create(
            AccountConfig(id=account_id, platform="synthetic", worker_id="w1")
        )
    yield master
    await master.archive.close()


def read(master: Master, kind: Any, *messages: Message) -> list[Received]:
    stream = master.keys.worker_stream("w1", kind)
    return [Received("w1", stream, m, f"1-{n}") for n, m in enumerate(messages)]


def success(account_id: str, user_id: str) -> LoginSuccess:
    return LoginSuccess(
        sender="w1", account_id=account_id, worker_id="w1", platform_user_id=user_id
    )


async def dead_letters(redis: Redis, settings: BusSettings) -> list[str]:
    entries = await redis.xrange(settings.keys.deadletter)
    return [fields[b"reason"].decode() for _id, fields in entries]


async def test_a_login_behind_a_failing_event_is_still_saved(master: Master, bus: Bus) -> None:
    redis, settings = bus
    # the login record the QR code is written to holds another type (WRONGTYPE)
    await redis.set(settings.keys.login("s-1"), "not a hash")
    qr = LoginQrCode(
        sender="w1", session_id="s-1", account_id="acc-1", worker_id="w1", png_b64="iVBO"
    )
    await master.on_events(read(master, "events", qr, success("acc-2", "222")))
    assert (await master.store.get("acc-2")).platform_user_id == "222"
    (reason,) = await dead_letters(redis, settings)
    assert reason.startswith("failed: ResponseError") and "WRONGTYPE" in reason


async def test_a_login_for_an_account_at_its_final_version_is_refused_alone(
    master: Master, bus: Bus
) -> None:
    redis, settings = bus
    key = settings.keys.account("acc-1")
    await redis.hset(key, "config_version", str(MAX_VERSION))
    before = await redis.hgetall(key)
    await master.on_events(read(master, "events", success("acc-1", "111"), success("acc-2", "222")))
    assert await redis.hgetall(key) == before  # nothing written, no partial write
    assert (await master.store.get("acc-2")).platform_user_id == "222"
    assert [p.account_id for p in await master.tracker.of_account("acc-1")] == []
    # an expiry of that account is refused the same way, not raised
    expired = LoginExpired(sender="w1", account_id="acc-1", worker_id="w1")
    await master.on_events(read(master, "events", expired))
    assert await redis.hgetall(key) == before


async def test_an_outage_while_handling_leaves_the_whole_read_pending(
    master: Master, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*_args: Any, **_kwargs: Any) -> Any:
        raise BusUnavailable("Redis is unreachable: test")

    monkeypatch.setattr(master.updates, "change", down)
    with pytest.raises(BusUnavailable):  # the reader keeps the entries for the next read
        await master.on_events(read(master, "events", success("acc-1", "1")))


async def test_an_ack_redis_refuses_does_not_lose_the_others(master: Master, bus: Bus) -> None:
    redis, settings = bus
    _result, sent = await master.updates.change("acc-2", {"name": "x"}, "admin_update")
    assert sent is not None
    # an account whose hash was overwritten with a string: its ACK gets WRONGTYPE
    await redis.set(settings.keys.account("acc-1"), "not a hash")
    acks = [
        AccountConfigUpdateAck(
            sender="w1",
            account_id=account_id,
            worker_id="w1",
            applied_version=2,
            seen_version=2,
            ok=True,
        )
        for account_id in ("acc-1", "acc-2")
    ]
    await master.on_acks(read(master, "acks", *acks))
    (outcome,) = await master.tracker.recent_outcomes()
    assert (outcome.update_id, outcome.status) == (sent.update_id, "applied")
    (reason,) = await dead_letters(redis, settings)
    assert "WRONGTYPE" in reason
