"""The sandbox platform: the shipped sandbox site (``hiscrm sandbox serve``) driven in
a real headless Chromium, exactly as a real platform would be.

Its comment and DM lists come a page at a time, newest first; a crawl opens the list,
then clicks the page's "more" button for each older page, and takes the items from
the responses the page receives, back to the newest item it already took and at most
``max_items_per_crawl`` of them (:mod:`.paging` has the contract). A gap left at that
bound is resumed later by opening the list at the gap's cursor (``/comments?cursor=N``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import CrawledItem

from ..browser import BrowserPool
from .base import (
    Fetched,
    LoginFailedError,
    LoginReporter,
    LoginResult,
    PlatformError,
    SessionExpired,
)
from .paging import ListPage, Tracker

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


def list_page(kind: str, doc: Any) -> ListPage:
    """One response of ``/api/comments`` or ``/api/dms``; ``seq`` orders the items."""
    if not isinstance(doc, dict) or doc.get("status_code", 0) != 0:
        raise PlatformError(f"sandbox {kind}: unexpected response")
    raw = doc.get(kind) or []
    if not isinstance(raw, list):
        raise PlatformError(f"sandbox {kind}: {kind!r} is not a list")
    entries = []
    try:
        for it in raw:
            entries.append(
                (
                    int(it["seq"]),
                    CrawledItem(
                        kind="comment" if kind == "comments" else "dm",
                        item_id=str(it["id"]),
                        text=str(it.get("text", "")),
                        author=str(it.get("author", "")),
                        created_at=datetime.fromtimestamp(int(it["create_time"]), UTC),
                    ),
                )
            )
        total = doc.get("total_count")
        return ListPage(
            entries,
            None if doc.get("cursor") is None else str(doc["cursor"]),
            bool(doc.get("has_more")),
            None if total is None else int(total),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise PlatformError(f"sandbox {kind}: malformed item ({exc})") from exc


def _navigating(exc: PlaywrightError) -> bool:
    text = exc.message.lower()
    return "context was destroyed" in text or "navigat" in text


class SandboxPlatform:
    name = "sandbox"

    def __init__(self, pool: BrowserPool, base_url: str) -> None:
        self.pool = pool
        self.base_url = base_url.rstrip("/")
        self._lists = Tracker()

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
            info = {k: user[k] for k in ("sec_uid", "nickname", "unique_id") if k in user}
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

    async def _fetch(self, account: AccountConfig, kind: str) -> Fetched:
        """Page through the list as the page itself does, taking the items from the
        responses it receives (paging contract: :mod:`.paging`)."""
        page = await self.pool.page(account.id, account.proxy)
        shown: str | None = None  # the cursor the page's "more" button asks for next

        async def read(cursor: str | None) -> ListPage:
            nonlocal shown
            async with page.expect_response(
                lambda r: r.url.split("?")[0].endswith(f"/api/{kind}"), timeout=15_000
            ) as info:
                if cursor is None:
                    await self._goto(page, f"/{kind}")
                elif cursor == shown:
                    await page.locator(f'#more[data-cursor="{cursor}"]').click(timeout=15_000)
                else:  # a gap's cursor from an earlier crawl: open the list there
                    await self._goto(page, f"/{kind}?cursor={quote(cursor)}")
            response = await info.value
            if response.status == 401:
                raise SessionExpired(
                    f"sandbox session of {account.id} is not logged in: "
                    f"run `hiscrm login {account.id}`"
                )
            if response.status != 200:
                raise PlatformError(f"sandbox {kind}: HTTP {response.status} at {response.url}")
            got = list_page(kind, await response.json())
            shown = got.next_cursor if got.has_more else None
            return got

        try:
            return await self._lists.fetch(account, kind, read)
        except PlaywrightError as exc:
            raise PlatformError(f"sandbox {kind}: {exc.message.splitlines()[0]}") from exc

    async def fetch_comments(self, account: AccountConfig) -> Fetched:
        return await self._fetch(account, "comments")

    async def fetch_dms(self, account: AccountConfig) -> Fetched:
        return await self._fetch(account, "dms")

    async def after_crawl(self, account: AccountConfig) -> None:
        await self.pool.checkpoint(account.id)

    async def release(self, account_id: str) -> None:
        self._lists.forget(account_id)
        await self.pool.release(account_id)
