"""The browser pool's bookkeeping over a stand-in browser (no Chromium): what it keeps
per account lasts only as long as the account is on this worker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from hiscrm_worker.browser import BrowserPool


class FakeContext:
    def __init__(self, proxy: str | None) -> None:
        self.proxy = proxy
        self.closed = False
        self.opened = anyio.Event()
        self.hold: anyio.Event | None = None

    def on(self, event: str, handler: Any) -> None:
        pass

    async def storage_state(self) -> dict[str, Any]:
        return {"cookies": [{"name": "sid", "value": "1"}], "origins": []}

    async def close(self) -> None:
        self.closed = True


class FakeBrowser:
    def __init__(self) -> None:
        self.contexts: list[FakeContext] = []
        self.hold: anyio.Event | None = None  # set: new_context waits for it

    async def new_context(self, **options: Any) -> FakeContext:
        if self.hold is not None:
            await self.hold.wait()
        ctx = FakeContext(options.get("proxy", {}).get("server"))
        self.contexts.append(ctx)
        return ctx


@pytest.fixture
def pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[BrowserPool, FakeBrowser]:
    pool = BrowserPool("/usr/bin/chromium", tmp_path / "worker")
    browser = FakeBrowser()

    async def fake_browser() -> FakeBrowser:
        return browser

    monkeypatch.setattr(pool, "browser", fake_browser)
    return pool, browser


def kept(pool: BrowserPool) -> list[dict[str, Any]]:
    return [pool._contexts, pool._proxies, pool._saved, dict(pool._locks), pool._pages]


async def test_released_accounts_leave_nothing_in_the_pool(pool) -> None:
    """Accounts that pass through a worker (a session opened and saved, then moved
    away) cost its pool nothing once released (review finding: locks, proxies and
    session digests of every account ever seen were kept)."""
    pool, browser = pool
    for n in range(3):
        await pool.context(f"acc-{n}", proxy="http://proxy:3128")
        await pool.save_state(f"acc-{n}")
    for n in range(3):
        await pool.release(f"acc-{n}")
    assert all(ctx.closed for ctx in browser.contexts)
    assert kept(pool) == [{}, {}, {}, {}, {}]
    # the session stays on disk for when the account comes back
    assert sorted(p.name for p in pool.state_dir.iterdir()) == [f"acc-{n}.json" for n in range(3)]


async def test_a_release_keeps_the_lock_of_a_context_being_opened(pool) -> None:
    """A release that comes while the account's context is being opened waits for it
    and keeps the lock while anyone waits on it: two tasks never hold an account's
    context lock at once."""
    pool, browser = pool
    browser.hold = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.context, "acc-1")
        await anyio.wait_all_tasks_blocked()
        lock = pool._locks["acc-1"]
        assert lock.locked()
        tg.start_soon(pool.release, "acc-1")
        await anyio.wait_all_tasks_blocked()
        assert pool._locks.get("acc-1") is lock  # the release waits on it
        browser.hold.set()
    (ctx,) = browser.contexts
    assert ctx.closed and kept(pool) == [{}, {}, {}, {}, {}]
