"""The Platform protocol every crawler implementation follows (DESIGN.md §6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import CrawledItem

__all__ = [
    "CrawledItem",
    "LoginFailedError",
    "LoginReporter",
    "LoginResult",
    "Platform",
    "PlatformError",
]


class PlatformError(Exception):
    """The platform could not do what was asked; the task reports it and goes on."""


class LoginFailedError(PlatformError):
    def __init__(self, reason: Literal["expired", "timeout", "error", "unsupported"], msg: str):
        super().__init__(msg)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LoginResult:
    platform_user_id: str
    user_info: dict[str, Any] = field(default_factory=dict)


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

    async def fetch_comments(self, account: AccountConfig) -> list[CrawledItem]:
        """New comments on the account's content."""
        ...

    async def fetch_dms(self, account: AccountConfig) -> list[CrawledItem]:
        """New direct messages to the account."""
        ...

    async def release(self, account_id: str) -> None:
        """The account's task stopped here: free what it held (e.g. a browser context)."""
        ...
