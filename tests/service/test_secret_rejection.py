"""A stored proxy URL that does not validate is rejected by the worker without its
credentials: not in the worker's or the Master's logs, the ACK, nor the outcome."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import DecodeError, decode
from hiscrm_bus.settings import BusSettings
from hiscrm_bus.streams import FIELD, Received
from hiscrm_master.service import Master
from hiscrm_master.settings import MasterSettings
from hiscrm_worker.service import Worker
from hiscrm_worker.settings import WorkerSettings

Bus = tuple[Redis, BusSettings]
PASSWORD = "S3cr3tPassw0rd"


@pytest.fixture
async def fleet(bus: Bus, tmp_path: Path) -> AsyncIterator[tuple[Master, Worker]]:
    redis, settings = bus
    master = Master(
        MasterSettings.model_validate({**settings.model_dump(), "master_id": "m1"}), redis
    )
    worker = Worker(
        WorkerSettings.model_validate(
            {
                **settings.model_dump(),
                "worker_id": "w1",
                "platforms": ("synthetic",),
                "data_dir": tmp_path / "w1",
            }
        ),
        redis,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(worker.runner.run)
        worker.tg = tg
        await worker.heartbeat()
        yield master, worker
        tg.cancel_scope.cancel()
    await master.archive.close()


async def test_a_rejected_proxy_leaves_its_password_out_of_logs_acks_and_outcomes(
    fleet: tuple[Master, Worker], bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    master, worker = fleet
    redis, settings = bus
    await master.store.create(
        AccountConfig(id="acc-1", platform="synthetic", worker_id="w1", monitor_interval_s=60)
    )
    await worker.reconcile()
    _result, sent = await master.updates.change("acc-1", {"name": "x"}, "admin_update")
    assert sent is not None
    # a few characters too long, written behind the store's back before the worker reads it
    proxy = f"http://alice:{PASSWORD}@proxy.example:8080/" + "x" * 460
    await redis.hset(settings.keys.account("acc-1"), "proxy", proxy)
    await worker.on_config_update(sent)

    entries: Any = await redis.xrange(worker.streams["acks"])
    raw = b"".join(fields[FIELD.encode()] for _id, fields in entries)
    assert PASSWORD.encode() not in raw
    received = []
    for _id, fields in entries:
        message = decode(fields[FIELD.encode()])
        assert not isinstance(message, DecodeError)
        received.append(Received(worker.id, worker.streams["acks"], message))
    await master.on_acks(received)
    (outcome,) = [
        o for o in await master.tracker.recent_outcomes() if o.update_id == sent.update_id
    ]
    assert outcome.status == "rejected"
    assert f"proxy=<hidden, {len(proxy)} chars>" in outcome.error
    assert PASSWORD not in outcome.error
    assert any("rejected by worker" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if PASSWORD in r.getMessage()]
