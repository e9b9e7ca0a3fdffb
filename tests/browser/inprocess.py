"""In-process browser tests' parts: the sandbox site on a thread, a QR reporter, and a
platform logged in by scanning as a phone would."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Literal

import anyio

from hiscrm_bus.accounts import AccountConfig
from hiscrm_sandbox.site import SandboxServer, serve
from hiscrm_worker.platforms.base import LoginResult
from hiscrm_worker.platforms.sandbox import SandboxPlatform


class Reporter:
    """A login reporter that keeps the QR codes shown and says when the first came."""

    def __init__(self) -> None:
        self.qr_shown = anyio.Event()
        self.pngs: list[bytes] = []

    async def qr(self, png: bytes, refresh: int) -> None:
        self.pngs.append(png)
        self.qr_shown.set()

    async def progress(self, status: Literal["page_opened", "scanned"]) -> None:
        pass


def running_site() -> Iterator[SandboxServer]:
    """The sandbox site on a free port, served from a thread (a fixture's body)."""
    server = serve("127.0.0.1", 0, 60, 3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def logged_in(
    site: SandboxServer,
    platform: SandboxPlatform,
    account: AccountConfig,
    user: str,
    nickname: str = "fan",
) -> AccountConfig:
    """``account`` logged in on the platform as ``user`` (the scan done on the site)."""
    reporter = Reporter()
    results: list[LoginResult] = []

    async def login() -> None:
        results.append(await platform.login(account, reporter))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(login)
            await reporter.qr_shown.wait()
            assert site.state.scan(user, nickname, None, confirm=True) is not None
    assert results and results[0].platform_user_id == user
    return account.model_copy(update={"platform_user_id": user})
