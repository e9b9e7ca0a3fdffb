"""The Platform protocol every crawler implementation follows (DESIGN.md §6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from hiscrm_bus.accounts import AccountConfig


class PlatformError(Exception):
    """The platform could not do what was asked; the task reports it and goes on."""


@dataclass(frozen=True, slots=True)
class CrawlItem:
    """One comment or direct message, carrying the platform's own id for de-duplication."""

    kind: Literal["comment", "dm"]
    item_id: str
    account_id: str
    text: str
    author: str
    created_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)


class Platform(Protocol):
    name: str

    async def fetch_comments(self, account: AccountConfig) -> list[CrawlItem]:
        """New comments on the account's content since the last call."""
        ...

    async def fetch_dms(self, account: AccountConfig) -> list[CrawlItem]:
        """New direct messages to the account since the last call."""
        ...
