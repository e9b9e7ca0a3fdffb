"""The sandbox platform: the shipped sandbox site (``hiscrm sandbox serve``) driven in
a real headless Chromium, exactly as a real platform would be.

Its login is the sandbox's own QR page. Its comments and DMs are taken as douyin's
are, by the same walkers (:mod:`.comments`, :mod:`.chat`) on the sandbox's creator
centre, which serves douyin's pages, elements and response shapes offline: the works
picker, each work's comments and their replies page by page, the chat page whose
messages live in component props. Only the site differs: its address, and its ids
(a letter and a number growing with posting order, ``c12``, where douyin's are
64-bit numbers).
"""

from __future__ import annotations

import logging

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from hiscrm_bus.accounts import AccountConfig

from ..browser import BrowserPool
from .base import (
    LoginFailedError,
    LoginReporter,
    LoginResult,
    PlatformError,
    SessionExpired,
)
from .comments import DEFAULT_WORKS
from .crawls import CreatorCrawls
from .creator import CreatorSite

log = logging.getLogger(__name__)

# what this platform reads from the site's pages (hiscrm_sandbox/pages.py)
QR = "#qr"
_CHANGED = """([state, src]) => {
  if (location.pathname === '/profile') return true;
  const s = document.querySelector('#status'), q = document.querySelector('#qr');
  if (!s || !q) return false;
  const loaded = q.complete && q.naturalWidth > 0;
  return s.dataset.state !== state || (loaded && q.getAttribute('src') !== src);
}"""
_SNAPSHOT = """() => {
  const s = document.querySelector('#status'), q = document.querySelector('#qr');
  return {path: location.pathname, state: s ? s.dataset.state : '',
          src: q ? (q.getAttribute('src') || '') : '', refresh: q ? +(q.dataset.refresh || 0) : 0};
}"""
_FETCH_JSON = """async (path) => {
  const r = await fetch(path, {credentials: 'same-origin'});
  return {status: r.status, body: await r.json()};
}"""


def sandbox_order(item_id: str) -> int:
    """The sandbox's ids (``c12``, ``d13``) order by their number."""
    return int(item_id[1:])


def sandbox_site(base_url: str) -> CreatorSite:
    """The sandbox site's creator centre, as the walkers see it."""
    return CreatorSite("sandbox", base_url.rstrip("/"), sandbox_order, timeout_s=15)


def _navigating(exc: PlaywrightError) -> bool:
    text = exc.message.lower()
    return "context was destroyed" in text or "navigat" in text


class SandboxPlatform(CreatorCrawls):
    name = "sandbox"

    def __init__(self, pool: BrowserPool, base_url: str, works: int = DEFAULT_WORKS) -> None:
        self.base_url = base_url.rstrip("/")
        super().__init__(pool, sandbox_site(self.base_url), works)

    def expired(self, account_id: str, exc: SessionExpired) -> str:
        return f"sandbox session of {account_id} is not logged in: run `hiscrm login {account_id}`"

    async def login(self, account: AccountConfig, reporter: LoginReporter) -> LoginResult:
        ctx = await self.pool.context(account.id, account.proxy)
        page = await ctx.new_page()
        try:
            await self._goto(page, "/login")
            await reporter.progress("page_opened")
            state, src = "", ""
            while True:
                try:
                    await page.wait_for_function(_CHANGED, arg=[state, src], timeout=0, polling=100)
                    snap = await page.evaluate(_SNAPSHOT)
                except PlaywrightError as exc:
                    if _navigating(exc):
                        continue  # the page moved on (to the profile) while we looked
                    raise
                if snap["path"] == "/profile":
                    break
                if snap["state"] == "failed":
                    raise LoginFailedError("expired", "the QR code expired too many times")
                if snap["src"] != src and snap["state"] in ("pending", "scanned"):
                    await reporter.qr(await page.locator(QR).screenshot(), snap["refresh"])
                if snap["state"] == "scanned" and state != "scanned":
                    await reporter.progress("scanned")
                state, src = snap["state"], snap["src"]
            result = await page.evaluate(_FETCH_JSON, "/api/profile/self")
            user = (result.get("body") or {}).get("user") or {}
            if result.get("status") != 200 or not user.get("uid"):
                raise LoginFailedError("error", f"profile after login: HTTP {result.get('status')}")
            await self.pool.save_state(account.id)
            info = {k: user[k] for k in ("uid", "sec_uid", "unique_id", "nickname") if k in user}
            return LoginResult(str(user["uid"]), info)
        except PlaywrightError as exc:
            raise LoginFailedError("error", f"browser: {exc.message.splitlines()[0]}") from exc
        finally:
            if not page.is_closed():
                await page.close()

    async def _goto(self, page: Page, path: str) -> None:
        try:
            await page.goto(self.base_url + path, timeout=15_000)
        except PlaywrightError as exc:
            raise PlatformError(
                f"sandbox site unreachable at {self.base_url}: {exc.message.splitlines()[0]}"
            ) from exc
