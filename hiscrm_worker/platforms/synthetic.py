"""The synthetic platform: generated comments, no browser, no site.

For control-plane runs and benchmarks with many workers, where a browser per worker
would measure Chromium rather than hiscrm. It cannot log in: give the account a
``platform_user_id`` with ``hiscrm account login-success``.
"""

from __future__ import annotations

import itertools

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.limits import utcnow
from hiscrm_bus.messages import CrawledItem

from .base import Fetched, LoginFailedError, LoginReporter, LoginResult, PlatformError


class SyntheticPlatform:
    name = "synthetic"

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}

    async def login(self, account: AccountConfig, reporter: LoginReporter) -> LoginResult:
        raise LoginFailedError(
            "unsupported", "the synthetic platform has no login page; use login-success"
        )

    async def fetch_comments(self, account: AccountConfig) -> Fetched:
        # one new comment per crawl: never more than max_items_per_crawl (at least 1),
        # so nothing is ever left and there is nothing to page
        if not account.platform_user_id:
            raise PlatformError("synthetic: not logged in")
        n = next(self._counters.setdefault(account.id, itertools.count(1)))
        item = CrawledItem(
            kind="comment",
            item_id=f"{account.platform_user_id}-c{n}",
            text=f"generated comment {n}",
            author="synthetic-fan",
            created_at=utcnow(),
        )
        return Fetched((item,))

    async def fetch_dms(self, account: AccountConfig) -> Fetched:
        return Fetched()

    async def after_crawl(self, account: AccountConfig) -> None:
        return None  # no session to keep

    async def release(self, account_id: str) -> None:
        self._counters.pop(account_id, None)
