"""Platform implementations, looked up by the account's ``platform`` field."""

from __future__ import annotations

from ..browser import BrowserPool
from .base import (
    CrawledItem,
    LoginFailedError,
    LoginReporter,
    LoginResult,
    Platform,
    PlatformError,
)

__all__ = [
    "BROWSER_PLATFORMS",
    "KNOWN",
    "CrawledItem",
    "LoginFailedError",
    "LoginReporter",
    "LoginResult",
    "Platform",
    "PlatformError",
    "build_platforms",
]
KNOWN = ("sandbox", "douyin", "synthetic")
BROWSER_PLATFORMS = frozenset({"sandbox", "douyin"})


def build_platforms(
    names: tuple[str, ...], pool: BrowserPool, sandbox_url: str
) -> dict[str, Platform]:
    """The platforms this worker supports. Unknown names are refused at start-up."""
    from .douyin import DouyinPlatform
    from .sandbox import SandboxPlatform
    from .synthetic import SyntheticPlatform

    out: dict[str, Platform] = {}
    for name in names:
        if name == "sandbox":
            out[name] = SandboxPlatform(pool, sandbox_url)
        elif name == "douyin":
            out[name] = DouyinPlatform(pool)
        elif name == "synthetic":
            out[name] = SyntheticPlatform()
        else:
            raise PlatformError(f"unknown platform {name!r} (known: {', '.join(KNOWN)})")
    return out
