"""The Master holds up against what a worker may legitimately write: its own streams,
its registry hash and one entry in the worker index. Nothing a worker writes there may
make the Master act for it on accounts it does not own, stop placing accounts, or
create keys and log lines without bound."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import AccountConfigUpdateAck, Message
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
    yield master
    await master.archive.close()


def read(master: Master, kind: Any, *messages: Message, worker: str = "w1") -> list[Received]:
    stream = master.keys.worker_stream(worker, kind)
    return [Received(worker, stream, m, f"1-{n}") for n, m in enumerate(messages)]


async def dead_letters(redis: Redis, settings: BusSettings) -> list[str]:
    entries = await redis.xrange(settings.keys.deadletter)
    return [fields[b"reason"].decode() for _id, fields in entries]


async def test_an_ack_for_an_unowned_account_is_refused_and_keeps_it_stale(
    master: Master, bus: Bus
) -> None:
    redis, settings = bus
    await master.store.create(AccountConfig(id="acc-1", platform="synthetic"))
    await master.store.set_stale("acc-1", True)
    ack = AccountConfigUpdateAck(
        sender="w1", account_id="acc-1", worker_id="w1", applied_version=1, seen_version=1, ok=True
    )
    await master.on_acks(read(master, "acks", ack))
    assert (await master.store.get("acc-1")).config_stale
    assert await dead_letters(redis, settings) == ["not_owner"]
    # and for no account at all: refused the same way, no hash created
    other = ack.model_copy(update={"account_id": "acc-9"})
    await master.on_acks(read(master, "acks", other))
    assert await dead_letters(redis, settings) == ["not_owner", "not_owner"]
    assert not await redis.exists(settings.keys.account("acc-9"))
