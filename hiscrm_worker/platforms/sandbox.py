"""The sandbox platform without a browser: it produces generated comments and messages.

A real Platform implementation (not a branch in the task runner), so the whole
hot-update path runs offline. The browser-driven sandbox site replaces its internals
when the browser issue lands; its contract stays.
"""

from __future__ import annotations

import itertools

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import utcnow

from .base import CrawlItem, PlatformError


class SandboxPlatform:
    name = "sandbox"

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}

    def _next(self, account: AccountConfig) -> int:
        return next(self._counters.setdefault(account.id, itertools.count(1)))

    async def fetch_comments(self, account: AccountConfig) -> list[CrawlItem]:
        if not account.platform_user_id:
            raise PlatformError("sandbox: not logged in")
        n = self._next(account)
        return [
            CrawlItem(
                kind="comment",
                item_id=f"{account.platform_user_id}-c{n}",
                account_id=account.id,
                text=f"generated comment {n}",
                author="sandbox-fan",
                created_at=utcnow(),
            )
        ]

    async def fetch_dms(self, account: AccountConfig) -> list[CrawlItem]:
        if not account.platform_user_id:
            raise PlatformError("sandbox: not logged in")
        return []
