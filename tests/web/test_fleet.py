"""The fleet page's workers table (issue 14): alive, heartbeat age, capacity, the hiscrm
version each worker runs, its platforms and accounts."""

from __future__ import annotations

import json
import logging

import pytest
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.limits import MAX_REASON_CHARS, utcnow
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_master.updates import Updates
from hiscrm_web.settings import WebSettings
from tests.cli.process import hiscrm
from tests.web.conftest import SignedIn
from tests.web.page import parse


async def test_the_workers_table_shows_each_workers_version_and_capacity(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    registry = WorkerRegistry(redis, web_settings.keys)
    info = WorkerInfo(id="w9", version="9.9.9", capacity=7, platforms=("sandbox", "douyin"))
    await registry.heartbeat(info, ttl_s=60)
    page = await signed_in.client.get("/")
    assert page.status_code == 200
    table = parse(page.text).by_id("workers")
    heads = [th.text for th in table.all("th")]
    assert heads == ["worker", "alive", "heartbeat", "capacity", "version", "platforms", "accounts"]
    (row,) = [tr for tr in table.all("tr") if tr.attrs.get("data-worker") == "w9"]
    cells = [td.text for td in row.all("td")]
    assert cells[0:2] == ["w9", "yes"]
    assert cells[3:6] == ["7", "9.9.9", "sandbox, douyin"]


async def write_registry(redis: Redis, settings: WebSettings, error: str) -> None:
    """Worker w1's registry hash as a worker (whose Redis user may write it) left it:
    its task of acc-1 failed with ``error``."""
    key = settings.keys.worker("w1")
    tasks = {"acc-1": {"state": "error", "error": error}}
    fields = {"platforms": '["synthetic"]', "heartbeat_at": utcnow().isoformat()}
    await redis.hset(key, mapping={**fields, "tasks": json.dumps(tasks), "host": "h" * 10**6})
    await redis.expire(key, 60)
    await redis.zadd(settings.keys.workers, {"w1": utcnow().timestamp()})
    config = AccountConfig(
        id="acc-1", platform="synthetic", worker_id="w1", platform_user_id="1864722759"
    )
    await Updates(redis, settings, "test").create(config)


async def test_a_huge_task_error_in_the_registry_leaves_the_pages_their_normal_size(
    signed_in: SignedIn,
    redis: Redis,
    web_settings: WebSettings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "hiscrm_bus.workers")
    await write_registry(redis, web_settings, "E" * (20 * 1024 * 1024))
    client = signed_in.client
    fleet = await client.get("/")
    rows = await client.get("/", headers={"HX-Request": "true"})  # every few seconds
    account = await client.get("/accounts/acc-1")
    for response in (fleet, rows, account):
        assert response.status_code == 200
        assert len(response.content) < 100_000
        assert "E" * 3000 not in response.text
    # the worker is still shown, alive, its host clipped
    (row,) = [
        tr
        for tr in parse(fleet.text).by_id("workers").all("tr")
        if tr.attrs.get("data-worker") == "w1"
    ]
    assert [td.text for td in row.all("td")][0:2] == ["w1", "yes"]
    # one line says why its tasks are not shown, not one per page
    lines = [r.getMessage() for r in caplog.records if r.name == "hiscrm_bus.workers"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("worker w1: registry field tasks is too large (")


async def test_a_long_task_error_is_shown_clipped_by_the_console_and_diagnose(
    signed_in: SignedIn, redis: Redis, web_settings: WebSettings
) -> None:
    await write_registry(redis, web_settings, "E" * 100_000)
    clipped = "E" * (MAX_REASON_CHARS - len("… (100000 chars)")) + "… (100000 chars)"
    for path in ("/", "/accounts/acc-1"):
        page = await signed_in.client.get(path)
        assert page.status_code == 200
        assert clipped in page.text
        assert "E" * (MAX_REASON_CHARS + 1) not in page.text
        assert len(page.content) < 100_000
    code, out, err = await hiscrm(web_settings, "diagnose", "acc-1", "--json")
    assert clipped in out, (code, err)
    assert "E" * (MAX_REASON_CHARS + 1) not in out
