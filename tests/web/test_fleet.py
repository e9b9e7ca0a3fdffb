"""The fleet page's workers table (issue 14): alive, heartbeat age, capacity, the hiscrm
version each worker runs, its platforms and accounts."""

from __future__ import annotations

from redis.asyncio import Redis

from hiscrm_bus.workers import WorkerInfo, WorkerRegistry
from hiscrm_web.settings import WebSettings
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
