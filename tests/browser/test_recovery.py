"""The browser layer in-process against the sandbox site: crashes are recovered from
the saved session, and reported, instead of killing the task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from playwright.async_api import Error as PlaywrightError

from hiscrm_bus.accounts import AccountConfig
from hiscrm_sandbox.site import SandboxServer
from hiscrm_worker.browser import BrowserPool
from hiscrm_worker.platforms.sandbox import SandboxPlatform
from tests.browser.inprocess import logged_in


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[tuple[BrowserPool, list[tuple[str, str]]]]:
    recovered: list[tuple[str, str]] = []
    pool = BrowserPool(
        "/usr/bin/chromium", tmp_path, lambda account, what: recovered.append((account, what))
    )
    yield pool, recovered
    await pool.close()


async def _logged_in(site: SandboxServer, platform: SandboxPlatform) -> AccountConfig:
    account = AccountConfig(id="acc-1", platform="sandbox", worker_id="w1")
    return await logged_in(site, platform, account, "42")


async def test_crashed_page_is_replaced_and_reported(site, pool) -> None:
    browser_pool, recovered = pool
    platform = SandboxPlatform(browser_pool, site.base_url)
    account = await _logged_in(site, platform)
    site.state.add_item("comments", "42", "first", "fan")
    assert [i.text for i in await platform.fetch_comments(account)] == ["first"]

    page = await browser_pool.page("acc-1")
    crashed = anyio.Event()
    page.on("crash", lambda p: crashed.set())
    with anyio.fail_after(10), pytest.raises(PlaywrightError):
        await page.goto("chrome://crash")
    with anyio.fail_after(10):
        await crashed.wait()

    site.state.add_item("comments", "42", "second", "fan")
    assert [i.text for i in await platform.fetch_comments(account)] == ["second"]
    assert recovered == [("acc-1", "page crashed and was replaced")]


async def test_closed_context_reopens_from_the_saved_session(site, pool) -> None:
    browser_pool, recovered = pool
    platform = SandboxPlatform(browser_pool, site.base_url)
    account = await _logged_in(site, platform)
    ctx = await browser_pool.context("acc-1")
    await ctx.close()
    site.state.add_item("dms", "42", "hi", "fan")
    assert [i.text for i in await platform.fetch_dms(account)] == ["hi"]
    assert ("acc-1", "browser context reopened") in recovered


async def test_killed_browser_is_relaunched(site, pool) -> None:
    browser_pool, recovered = pool
    platform = SandboxPlatform(browser_pool, site.base_url)
    account = await _logged_in(site, platform)
    browser = await browser_pool.browser()
    await browser.close()
    site.state.add_item("comments", "42", "after relaunch", "fan")
    assert [i.text for i in await platform.fetch_comments(account)] == ["after relaunch"]
    assert browser_pool.relaunches == 1
    # its context went down with it: either report says so
    assert {a for a, _what in recovered} == {"acc-1"}


async def test_not_logged_in_is_a_clear_platform_error(site, pool) -> None:
    from hiscrm_worker.platforms import PlatformError

    browser_pool, _ = pool
    platform = SandboxPlatform(browser_pool, site.base_url)
    account = AccountConfig(id="acc-2", platform="sandbox", platform_user_id="7")
    with pytest.raises(PlatformError, match="hiscrm login acc-2"):
        await platform.fetch_comments(account)


async def test_hot_swaps_keep_the_context_and_a_proxy_change_reopens_it(pool) -> None:
    browser_pool, _ = pool
    first = await browser_pool.context("acc-1")
    assert await browser_pool.context("acc-1") is first
    proxied = await browser_pool.context("acc-1", proxy="http://127.0.0.1:9")
    assert proxied is not first
    assert await browser_pool.context("acc-1", proxy="http://127.0.0.1:9") is proxied
