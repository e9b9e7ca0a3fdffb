"""The browser layer in-process against the sandbox site: crashes are recovered from
the saved session, and reported, instead of killing the task."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import anyio
import pytest
from playwright.async_api import Error as PlaywrightError

from hiscrm_bus.accounts import AccountConfig
from hiscrm_sandbox.site import SandboxServer, serve
from hiscrm_worker.browser import BrowserPool
from hiscrm_worker.platforms.sandbox import SandboxPlatform


class Reporter:
    def __init__(self) -> None:
        self.qr_shown = anyio.Event()
        self.pngs: list[bytes] = []

    async def qr(self, png: bytes, refresh: int) -> None:
        self.pngs.append(png)
        self.qr_shown.set()

    async def progress(self, status: Literal["page_opened", "scanned"]) -> None:
        pass


@pytest.fixture
def site() -> AsyncIterator[SandboxServer]:
    server = serve("127.0.0.1", 0, 60, 3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


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
    reporter = Reporter()
    result = None

    async def login() -> None:
        nonlocal result
        result = await platform.login(account, reporter)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(login)
            await reporter.qr_shown.wait()
            assert site.state.scan("42", "fan", None, confirm=True) is not None
    assert result is not None and result.platform_user_id == "42"
    return account.model_copy(update={"platform_user_id": "42"})


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
