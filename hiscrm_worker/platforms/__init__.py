"""Platform implementations, looked up by the account's ``platform`` field."""

from __future__ import annotations

from collections.abc import Callable

from hiscrm_bus.accounts import PLATFORMS, unknown_platform

from ..browser import BrowserPool
from .base import (
    CrawledItem,
    LoginFailedError,
    LoginReporter,
    LoginResult,
    Platform,
    PlatformError,
    SessionExpired,
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
    "SessionExpired",
    "build_platforms",
    "registry",
]
KNOWN = PLATFORMS  # the bus's set: what an account's ``platform`` may be
BROWSER_PLATFORMS = frozenset({"sandbox", "douyin"})
Factory = Callable[[BrowserPool, str], Platform]


def registry() -> dict[str, Factory]:
    """Each platform's constructor (pool, sandbox URL), by name; its names are
    :data:`KNOWN`, in that order (a test keeps them equal)."""
    from .douyin import DouyinPlatform
    from .sandbox import SandboxPlatform
    from .synthetic import SyntheticPlatform

    return {
        "sandbox": SandboxPlatform,
        "douyin": lambda pool, _url: DouyinPlatform(pool),
        "synthetic": lambda _pool, _url: SyntheticPlatform(),
    }


def build_platforms(
    names: tuple[str, ...], pool: BrowserPool, sandbox_url: str
) -> dict[str, Platform]:
    """The platforms this worker supports. Unknown names are refused at start-up."""
    factories = registry()
    out: dict[str, Platform] = {}
    for name in names:
        factory = factories.get(name)
        if factory is None:
            raise PlatformError(unknown_platform(name))
        out[name] = factory(pool, sandbox_url)
    return out
