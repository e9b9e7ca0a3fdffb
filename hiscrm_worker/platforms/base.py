"""The Platform protocol every crawler implementation follows (DESIGN.md §6)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import CrawledItem

__all__ = [
    "CrawledItem",
    "Fetched",
    "LoginFailedError",
    "LoginReporter",
    "LoginResult",
    "Platform",
    "PlatformChanged",
    "PlatformError",
    "PlatformRefused",
    "SessionExpired",
]

_MAX_MESSAGE = 1500  # a task error travels in a bounded field (TaskStatus.error)


class PlatformError(Exception):
    """The platform could not do what was asked; the task reports it and goes on."""


class SessionExpired(PlatformError):
    """The platform no longer accepts the account's session (sent to the login page, or
    an API's not-logged-in answer): it needs a new login, not another try."""


def _bounded(prefix: str, address: str, detail: str) -> str:
    text = f"{prefix}: {address}: {detail}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


class PlatformChanged(PlatformError):
    """The site answered in a shape we do not know (a missing key, a list that is not
    one, a page without the element we act on): its parser must follow the site, and
    the crawl must not read that as "nothing new". The text starts with
    ``platform_changed:`` and names the address and what is missing."""

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(_bounded("platform_changed", address, detail))
        self.address = address
        self.detail = detail


class PlatformRefused(PlatformError):
    """The site answered with an error of its own (``status_code`` other than 0, an
    HTTP error status): ``platform_error: <address>: status_code N (message)``."""

    def __init__(self, address: str, detail: str) -> None:
        super().__init__(_bounded("platform_error", address, detail))
        self.address = address
        self.detail = detail


class LoginFailedError(PlatformError):
    def __init__(self, reason: Literal["expired", "timeout", "error", "unsupported"], msg: str):
        super().__init__(msg)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LoginResult:
    platform_user_id: str
    user_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one fetch of a list took: its new items, newest first, and how many new
    items it saw but left for the next crawls because of ``max_items_per_crawl``.
    Iterating it iterates the items."""

    items: tuple[CrawledItem, ...] = ()
    left: int = 0

    def __iter__(self) -> Iterator[CrawledItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class LoginReporter(Protocol):
    async def qr(self, png: bytes, refresh: int) -> None:
        """A QR code to scan was shown (``refresh`` counts replacements)."""
        ...

    async def progress(self, status: Literal["page_opened", "scanned"]) -> None: ...


class Platform(Protocol):
    name: str

    async def login(self, account: AccountConfig, reporter: LoginReporter) -> LoginResult:
        """Run a QR login to the end (the caller bounds it in time); raise
        LoginFailedError when it cannot succeed."""
        ...

    async def fetch_comments(self, account: AccountConfig) -> Fetched:
        """Comments new since the last fetch, at most ``account.max_items_per_crawl``."""
        ...

    async def fetch_dms(self, account: AccountConfig) -> Fetched:
        """Direct messages new since the last fetch, at most ``max_items_per_crawl``."""
        ...

    async def after_crawl(self, account: AccountConfig) -> None:
        """A crawl went well: keep what it changed of the session (its cookies)."""
        ...

    async def release(self, account_id: str) -> None:
        """The account's task stopped here: free what it held (e.g. a browser context)."""
        ...
