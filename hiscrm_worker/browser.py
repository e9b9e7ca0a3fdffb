"""One shared headless Chromium (Debian's, via Playwright's ``executable_path``) with one
context per account, restored from and saved to the account's storage state.

A crashed page is closed and replaced; a closed context is reopened from the saved
state; a browser that went away is relaunched. Each recovery is reported through
``on_recover`` so it shows up as a task status, not as a dead task. Session data stays
in the worker's data directory (mode 0600) and never goes on the bus or into logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from playwright.async_api import Browser, BrowserContext, Page, Playwright, async_playwright

from hiscrm_bus.errors import ConfigurationError

from .settings import private_dir, write_private
from .vault import SessionUnreadable, SessionVault, digest

log = logging.getLogger(__name__)
_DRIVER_GONE = "Connection closed while reading from the driver"


def _quiet_driver_loss() -> None:
    """A stop signal sent to the whole process group (``kill -TERM -PGID``, systemd's
    control-group stop, a closed terminal) reaches the Playwright driver too, which
    exits at once; Playwright then fails the futures of calls that were in flight and
    nobody awaits any more. That is the expected end of a stop, not an error to print
    as a traceback: it is logged at debug level, everything else goes on as before."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if _DRIVER_GONE in str(context.get("exception", "")):
            log.debug("the Playwright driver went away (a call in flight was dropped)")
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


RecoverHook = Callable[[str, str], None]


def check_chromium(path: str) -> str:
    """The Chromium binary to drive, or ConfigurationError saying how to get one."""
    found = (
        shutil.which(path) if os.sep not in path else (path if os.access(path, os.X_OK) else None)
    )
    if not found:
        raise ConfigurationError(
            f"Chromium was not found at {path}: install Debian's package with "
            "`apt-get install chromium`, or point HISCRM_CHROMIUM at a Chromium binary"
        )
    return found


class BrowserPool:
    def __init__(
        self,
        chromium: str,
        data_dir: Path,
        on_recover: RecoverHook | None = None,
        vault: SessionVault | None = None,
    ) -> None:
        self.chromium = chromium
        self.data_dir = data_dir
        self.state_dir = data_dir / "state"
        self.on_recover = on_recover or (lambda account_id, what: None)
        self._pw: Playwright | None = None
        self._browser: Browser | None = None
        self._contexts: dict[str, BrowserContext] = {}
        self._proxies: dict[str, str | None] = {}
        self._pages: dict[str, Page] = {}
        self._crashed: set[str] = set()
        self._locks: defaultdict[str, anyio.Lock] = defaultdict(anyio.Lock)
        self._launch_lock = anyio.Lock()
        self.relaunches = 0
        # sessions in Redis, sealed (None: they stay in state_dir on this host only)
        self.vault = vault
        self._saved: dict[str, str] = {}  # account → digest of the session last stored

    # browser

    async def browser(self) -> Browser:
        async with self._launch_lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._pw is None:
                _quiet_driver_loss()
                self._pw = await async_playwright().start()
            private_dir(self.data_dir, tighten=False)
            home = private_dir(self.data_dir / "chromium-home")
            env: dict[str, str | float | bool] = {
                **os.environ,
                "HOME": str(home),
                "XDG_CONFIG_HOME": str(home / ".config"),
            }
            # the worker stops Chromium itself, in order: a terminal's Ctrl-C (which
            # reaches the Playwright driver too) must not close it from under us
            self._browser = await self._pw.chromium.launch(
                executable_path=self.chromium,
                headless=True,
                env=env,
                handle_sigint=False,
                handle_sigterm=False,
                handle_sighup=False,
            )
            self._browser.on("disconnected", self._on_disconnected)
            log.info("chromium launched (%s)", self.chromium)
            return self._browser

    def _on_disconnected(self, browser: Browser) -> None:
        if browser is not self._browser:
            return
        log.warning("chromium went away; it is relaunched on next use")
        self._browser = None
        for account_id in list(self._contexts):
            self._forget(account_id)
            self.on_recover(account_id, "browser relaunched")
        self.relaunches += 1

    # contexts and pages

    def state_file(self, account_id: str) -> Path:
        return self.state_dir / f"{account_id}.json"

    async def context(self, account_id: str, proxy: str | None = None) -> BrowserContext:
        async with self._locks[account_id]:
            ctx = self._contexts.get(account_id)
            if ctx is not None and self._proxies.get(account_id) != proxy:
                log.info("account %s: proxy changed; reopening its browser context", account_id)
                await self._close_context(account_id)
                ctx = None
            if ctx is None:
                ctx = await self._open_context(account_id, proxy)
            return ctx

    async def _stored_session(self, account_id: str) -> dict[str, Any] | None:
        """The account's session from the vault, None when it has none or it cannot
        be opened (said once, as the account's problem: it needs a new login)."""
        if self.vault is None:
            return None
        try:
            stored = await self.vault.get(account_id)
        except SessionUnreadable as exc:
            log.error(
                "account %s: %s; log it in again: hiscrm login %s", account_id, exc, account_id
            )
            self.on_recover(account_id, f"{exc}: run hiscrm login {account_id}")
            return None
        if stored is None:
            return None
        self._saved[account_id] = digest(stored.state)
        return stored.state

    async def _open_context(self, account_id: str, proxy: str | None) -> BrowserContext:
        browser = await self.browser()
        options: dict[str, Any] = {}
        state = self.state_file(account_id)
        stored = await self._stored_session(account_id)
        if stored is not None:
            options["storage_state"] = stored
        elif state.exists():  # a session of this host only (no vault, or not yet in it)
            options["storage_state"] = str(state)
        if proxy:
            options["proxy"] = {"server": proxy}
        ctx = await browser.new_context(**options)
        ctx.on("close", lambda c: self._on_context_closed(account_id, c))
        self._contexts[account_id] = ctx
        self._proxies[account_id] = proxy
        log.info(
            "account %s: browser context opened%s",
            account_id,
            " from saved session" if "storage_state" in options else "",
        )
        return ctx

    def _on_context_closed(self, account_id: str, ctx: BrowserContext) -> None:
        if self._contexts.get(account_id) is ctx:
            self._forget(account_id)
            log.warning("account %s: browser context closed; reopened on next use", account_id)
            self.on_recover(account_id, "browser context reopened")

    def _forget(self, account_id: str) -> None:
        self._contexts.pop(account_id, None)
        self._proxies.pop(account_id, None)
        self._pages.pop(account_id, None)
        self._crashed.discard(account_id)

    async def page(self, account_id: str, proxy: str | None = None) -> Page:
        """The account's working page, replaced if it crashed or closed."""
        ctx = await self.context(account_id, proxy)
        async with self._locks[account_id]:
            page = self._pages.get(account_id)
            if page is not None and (account_id in self._crashed or page.is_closed()):
                self._crashed.discard(account_id)
                self._pages.pop(account_id, None)
                with anyio.move_on_after(5):
                    await page.close()
                log.warning("account %s: page crashed; opened a new one", account_id)
                self.on_recover(account_id, "page crashed and was replaced")
                page = None
            if page is None:
                page = await ctx.new_page()
                page.on("crash", lambda p: self._crashed.add(account_id))
                self._pages[account_id] = page
            return page

    async def save_state(self, account_id: str) -> None:
        """Keep the account's session: in the vault when there is one (so it follows
        the account to any worker), and in this host's cache. Written only on change."""
        ctx = self._contexts.get(account_id)
        if ctx is None:
            return
        state: dict[str, Any] = dict(await ctx.storage_state())
        fingerprint = digest(state)
        if self._saved.get(account_id) == fingerprint:
            return
        private_dir(self.data_dir, tighten=False)
        private_dir(self.state_dir)  # sessions are logins: no one else may even list them
        write_private(self.state_file(account_id), json.dumps(state))
        if self.vault is not None:
            await self.vault.put(account_id, state)
        self._saved[account_id] = fingerprint

    async def checkpoint(self, account_id: str) -> None:
        """After a crawl: store the session if its cookies changed (never fails the
        crawl: an unsaved session is saved at the next checkpoint)."""
        try:
            await self.save_state(account_id)
        except Exception as exc:
            log.warning(
                "account %s: session not saved (%s); trying after the next crawl",
                account_id,
                type(exc).__name__,
            )

    async def release(self, account_id: str) -> None:
        """Close the account's context (its saved state stays on disk, and in the
        vault) and forget the account: a pool keeps nothing of accounts gone elsewhere."""
        lock = self._locks[account_id]
        try:
            async with lock:
                await self._close_context(account_id)
                self._saved.pop(account_id, None)
        finally:
            # a task that waits for the lock (a crawl that began meanwhile) keeps it
            if (
                self._locks.get(account_id) is lock
                and not lock.locked()
                and not lock.statistics().tasks_waiting
            ):
                del self._locks[account_id]

    async def _close_context(self, account_id: str) -> None:
        ctx = self._contexts.get(account_id)
        self._forget(account_id)
        if ctx is not None:
            with anyio.move_on_after(5):
                await ctx.close()

    async def close(self) -> None:
        """Close every context, then Chromium, then the driver; a part already gone
        (a crashed browser) is no reason to leave the rest running."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            for account_id in list(self._contexts):
                with contextlib.suppress(Exception):
                    await self._close_context(account_id)
            if self._browser is not None:
                browser, self._browser = self._browser, None
                with contextlib.suppress(Exception):
                    await browser.close()
            if self._pw is not None:
                pw, self._pw = self._pw, None
                with contextlib.suppress(Exception):
                    await pw.stop()
