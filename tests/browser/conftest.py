from __future__ import annotations

import itertools
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from hiscrm_sandbox.site import SandboxServer
from hiscrm_worker.browser import BrowserPool
from hiscrm_worker.platforms.sandbox import SandboxPlatform
from tests.browser.inprocess import running_site
from tests.e2e.stack import Stack, running_stack, wait_for
from tests.redis_server import RedisServer, free_port

_n = itertools.count()


class Site:
    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url


def _start_site(tmp_path: Path, qr_ttl: float, max_refresh: int) -> Site:
    port = free_port()
    log = (tmp_path / f"site-{port}.log").open("ab")
    with log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hiscrm_cli",
                "sandbox",
                "serve",
                "--port",
                str(port),
                "--qr-ttl",
                str(qr_ttl),
                "--max-refresh",
                str(max_refresh),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/login", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(up, what="sandbox site up")
    return Site(proc, url)


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def make(qr_ttl: float = 60, max_refresh: int = 3) -> Site:
        site = _start_site(tmp_path, qr_ttl, max_refresh)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.proc.terminate()
        site.proc.wait(10)


@pytest.fixture
def browser_stack(redis_server: RedisServer, tmp_path: Path) -> Iterator[Stack]:
    with running_stack(redis_server.url, f"b{next(_n)}:", tmp_path) as s:
        s.extra_env["HISCRM_DATA_DIR"] = str(tmp_path / "worker-data")
        yield s


@pytest.fixture
def site() -> Iterator[SandboxServer]:
    """The sandbox site in-process (a thread), for tests that drive a platform directly."""
    yield from running_site()


@pytest.fixture
async def platform(site: SandboxServer, tmp_path: Path) -> AsyncIterator[SandboxPlatform]:
    """The sandbox platform in-process, on its own Chromium, against ``site``."""
    pool = BrowserPool("/usr/bin/chromium", tmp_path, lambda account, what: None)
    yield SandboxPlatform(pool, site.base_url)
    await pool.close()
