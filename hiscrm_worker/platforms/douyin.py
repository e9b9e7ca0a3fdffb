"""The douyin platform: QR login on www.douyin.com and the creator centre's comment and
message pages, read from the responses the logged-in pages receive (no signed calls).

It cannot be reached from the development machines; its parsers are tested against
payload fixtures of the real shape, and all its addresses and selectors live in
``douyin_api`` so they are easy to update."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import CrawledItem

from ..browser import BrowserPool
from . import douyin_api as api
from .base import (
    Fetched,
    LoginFailedError,
    LoginReporter,
    LoginResult,
    PlatformError,
    SessionExpired,
)

_LOGGED_IN = f"() => localStorage.getItem('{api.LOGIN_STORAGE_KEY}') === '1'"
_FETCH_JSON = "async (p) => (await fetch(p, {credentials: 'include'})).json()"


class DouyinPlatform:
    name = "douyin"

    def __init__(self, pool: BrowserPool) -> None:
        self.pool = pool

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
            uid, info = api.parse_profile(await page.evaluate(_FETCH_JSON, api.PROFILE_SELF_PATH))
            await self.pool.save_state(account.id)
            return LoginResult(uid, info)
        except PlaywrightError as exc:
            raise LoginFailedError("error", f"browser: {exc.message.splitlines()[0]}") from exc
        finally:
            if not page.is_closed():
                await page.close()

    async def _from_page(
        self,
        account: AccountConfig,
        url: str,
        path: str,
        parse: Callable[[object], list[CrawledItem]],
    ) -> list[CrawledItem]:
        page = await self.pool.page(account.id, account.proxy)
        try:
            async with page.expect_response(lambda r: path in r.url, timeout=30_000) as info:
                await page.goto(url, timeout=30_000)
            response = await info.value
            if response.status in (401, 403):
                raise SessionExpired(f"douyin session of {account.id} expired: log in again")
            doc = await response.json()
        except PlaywrightError as exc:
            raise PlatformError(f"douyin: {exc.message.splitlines()[0]}") from exc
        except ValueError as exc:
            raise PlatformError(f"douyin: response is not JSON ({exc})") from exc
        return parse(doc)

    # One response per crawl, as before: paging these lists back to the newest item
    # already taken (their ``cursor`` / ``has_more``, with .paging as the sandbox does)
    # is issue 12. Until then a crawl takes the first page and reports nothing left.
    async def fetch_comments(self, account: AccountConfig) -> Fetched:
        items = await self._from_page(
            account, api.CREATOR_COMMENTS_URL, api.COMMENT_LIST_PATH, api.parse_comment_list
        )
        return Fetched(tuple(items))

    async def fetch_dms(self, account: AccountConfig) -> Fetched:
        items = await self._from_page(
            account, api.CREATOR_MESSAGES_URL, api.MESSAGE_LIST_PATH, api.parse_message_list
        )
        return Fetched(tuple(items))

    async def after_crawl(self, account: AccountConfig) -> None:
        await self.pool.checkpoint(account.id)

    async def release(self, account_id: str) -> None:
        await self.pool.release(account_id)
