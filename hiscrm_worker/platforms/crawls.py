"""What the douyin platform and its sandbox stand-in share: the creator centre's comment
and DM walks on the account's working page, their errors, the session checkpoint."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page

from hiscrm_bus.accounts import AccountConfig

from ..browser import BrowserPool
from .base import Fetched, PlatformError, SessionExpired
from .chat import ChatWalker
from .comments import CommentWalker
from .creator import CreatorSite

Walk = Callable[[Page, AccountConfig], Awaitable[Fetched]]


class CreatorCrawls:
    """The crawl half of a creator-centre platform; a subclass adds its login."""

    name: str

    def __init__(self, pool: BrowserPool, site: CreatorSite, works: int) -> None:
        self.pool = pool
        self._comments = CommentWalker(site, works)
        self._chat = ChatWalker(site)

    def expired(self, account_id: str, exc: SessionExpired) -> str:
        """What the task reports when the site refuses the account's session."""
        return f"{self.name} session of {account_id} expired ({exc}): log in again"

    async def _walk(self, account: AccountConfig, walk: Walk) -> Fetched:
        page = await self.pool.page(account.id, account.proxy)
        try:
            return await walk(page, account)
        except SessionExpired as exc:
            raise SessionExpired(self.expired(account.id, exc)) from exc
        except PlaywrightError as exc:
            raise PlatformError(f"{self.name}: {exc.message.splitlines()[0]}") from exc

    async def fetch_comments(self, account: AccountConfig) -> Fetched:
        return await self._walk(account, self._comments.fetch)

    async def fetch_dms(self, account: AccountConfig) -> Fetched:
        return await self._walk(account, self._chat.fetch)

    async def after_crawl(self, account: AccountConfig) -> None:
        await self.pool.checkpoint(account.id)

    async def release(self, account_id: str) -> None:
        self._comments.forget(account_id)
        self._chat.forget(account_id)
        await self.pool.release(account_id)
