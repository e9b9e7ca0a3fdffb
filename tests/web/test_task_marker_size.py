"""The account page's live updates read its owner's task report within the registry's
bounds: a worker that made its ``tasks`` field huge does not block the console."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
from redis.asyncio import Redis

from hiscrm_bus.accounts import AccountConfig, AccountStore
from hiscrm_web.accounts import task_marker
from hiscrm_web.settings import WebSettings


async def test_a_huge_tasks_field_is_not_read(web_settings: WebSettings) -> None:
    keys = web_settings.keys
    redis = Redis.from_url(web_settings.redis_url)
    try:
        await AccountStore(redis, keys).create(
            AccountConfig(id="acc-1", platform="synthetic", worker_id="w1")
        )
        report = '{"acc-1": {"state": "running", "applied_version": 1}}'
        await redis.hset(keys.worker("w1"), "tasks", report)
        console: Any = SimpleNamespace(redis=redis, settings=web_settings)
        marker = await task_marker(console, "acc-1")
        assert marker[-1] == ("running", 1, None)
        await redis.hset(keys.worker("w1"), "tasks", '{"acc-1": ' + " " * 60_000_000 + "{}}")
        before: Any = await redis.info("stats")
        with anyio.fail_after(1):  # was 1.5-3.3 s of parsing, the console blocked
            marker = await task_marker(console, "acc-1")
        after: Any = await redis.info("stats")
        assert marker[-1] is None
        assert after["total_net_output_bytes"] - before["total_net_output_bytes"] < 100_000
    finally:
        await redis.aclose()
