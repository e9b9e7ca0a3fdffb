"""Platform implementations, looked up by the account's ``platform`` field."""

from __future__ import annotations

from .base import CrawlItem, Platform, PlatformError
from .sandbox import SandboxPlatform

__all__ = ["CrawlItem", "Platform", "PlatformError", "SandboxPlatform", "make_platforms"]


def make_platforms(names: tuple[str, ...]) -> dict[str, Platform]:
    """The platforms this worker supports. Unknown names are refused at start-up."""
    known: dict[str, type[SandboxPlatform]] = {"sandbox": SandboxPlatform}
    out: dict[str, Platform] = {}
    for name in names:
        if name == "douyin":
            # the browser-driven douyin platform lands with the browser issue; until
            # then a douyin account reports a clear task error instead of crawling
            out[name] = UnavailablePlatform(name, "the douyin browser platform is not built yet")
        elif name in known:
            out[name] = known[name]()
        else:
            raise PlatformError(f"unknown platform {name!r} (known: sandbox, douyin)")
    return out


class UnavailablePlatform:
    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why

    async def fetch_comments(self, account: object) -> list[CrawlItem]:
        raise PlatformError(self.why)

    async def fetch_dms(self, account: object) -> list[CrawlItem]:
        raise PlatformError(self.why)
