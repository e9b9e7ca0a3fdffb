"""The douyin platform: QR login on www.douyin.com, then the creator centre's comment
and chat pages walked as a person would (:mod:`.comments`, :mod:`.chat`), with every
item read from what the logged-in pages receive (no signed calls).

It cannot be reached from the development machines. The walkers run offline against
the sandbox site, which serves the same pages and response shapes; the parsers are
tested against payloads of the real shape; and every address, selector and parser
lives in ``douyin_api``, so a site change is one file to update (the crawl reports it
as ``platform_changed: …``)."""

from __future__ import annotations

from typing import Any

import anyio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from hiscrm_bus.accounts import AccountConfig

from ..browser import BrowserPool
from . import douyin_api as api
from .base import (
    LoginFailedError,
    LoginReporter,
    LoginResult,
    PlatformError,
)
from .comments import DEFAULT_WORKS
from .crawls import CreatorCrawls
from .creator import DOUYIN

_LOGGED_IN = f"() => localStorage.getItem('{api.LOGIN_STORAGE_KEY}') === '1'"
_FETCH_JSON = "async (p) => (await fetch(p, {credentials: 'include'})).json()"


class DouyinPlatform(CreatorCrawls):
    name = "douyin"

    def __init__(self, pool: BrowserPool, works: int = DEFAULT_WORKS) -> None:
        super().__init__(pool, DOUYIN, works)

    async def _logged_in(self, page: Page) -> bool:
        cookies = await page.context.cookies()
        if any(c["name"] == api.LOGIN_COOKIE and c["value"] == "1" for c in cookies):
            return True
        return bool(await page.evaluate(_LOGGED_IN))

    async def login(self, account: AccountConfig, reporter: LoginReporter) -> LoginResult:
        ctx = await self.pool.context(account.id, account.proxy)
        page = await ctx.new_page()
        try:
            await page.goto(api.HOME_URL, timeout=30_000)
            await reporter.progress("page_opened")
            if not await self._logged_in(page):
                await page.locator(api.LOGIN_BUTTON).first.click(timeout=15_000)
                src, refresh, scanned = "", -1, False
                while not await self._logged_in(page):
                    qr = page.locator(api.QR_IMAGE).first
                    now = await qr.get_attribute("src", timeout=15_000) or ""
                    if now != src:
                        src, refresh = now, refresh + 1
                        await reporter.qr(await qr.screenshot(), refresh)
                    if not scanned and await page.locator(api.QR_SCANNED).count():
                        scanned = True
                        await reporter.progress("scanned")
                    if await page.locator(api.QR_EXPIRED).count():
                        raise LoginFailedError("expired", "the douyin QR code expired")
                    await anyio.sleep(0.5)  # the page gives no event for a remote scan
            uid, info = api.parse_profile(await self._profile(page))
            await self.pool.save_state(account.id)
            return LoginResult(uid, info)
        except PlatformError as exc:
            raise LoginFailedError("error", f"profile after login: {exc}") from exc
        except PlaywrightError as exc:
            raise LoginFailedError("error", f"browser: {exc.message.splitlines()[0]}") from exc
        finally:
            if not page.is_closed():
                await page.close()

    async def _profile(self, page: Page) -> Any:
        """The profile the home page itself asks for (with the parameters the web app
        sends); our own call of the same address if the page does not ask in time."""
        try:
            async with page.expect_response(
                lambda r: api.matches(r.url, (api.PROFILE_SELF_PATH,)), timeout=15_000
            ) as info:
                await page.goto(api.HOME_URL, timeout=30_000)
            return await (await info.value).json()
        except (PlaywrightTimeout, ValueError):
            return await page.evaluate(_FETCH_JSON, api.PROFILE_SELF_PATH)
