"""The seed's scenario, played on a running stack, with a timeline as it happens:
account added → task waiting for login → QR login → platform_user_id saved → config
update sent → worker applied it → comments crawled → diagnose all green."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.messages import LoginFailed, LoginQrCode, LoginSuccess, TaskStatus
from hiscrm_bus.streams import StreamFollower
from hiscrm_bus.workers import WorkerRegistry
from hiscrm_master.archive import Archive, Filter
from hiscrm_master.database import DatabaseUnavailable
from hiscrm_master.diagnosis import diagnose
from hiscrm_master.login import start_login
from hiscrm_master.settings import MasterSettings
from hiscrm_master.snapshot import collect
from hiscrm_master.updates import Updates

from .common import EXIT_FAILED, EXIT_OK, console, redis_client
from .qrview import qr_to_text
from .terminal import safe

T = TypeVar("T")
ACCOUNT = "demo-1"
USER_ID = "1864722759"
SENDER = "demo"


class Timeline:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, text: str) -> None:
        console.print(f"[dim]+{time.monotonic() - self.start:6.2f}s[/dim]  {text}", highlight=False)


async def _step(what: str, timeout_s: float, wait: Callable[[], Awaitable[T]]) -> T:
    with console.status(what), anyio.fail_after(timeout_s):
        return await wait()


def _post(url: str, doc: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(doc).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


async def play(redis_url: str, site_url: str) -> int:
    settings = MasterSettings(redis_url=redis_url, master_id=SENDER)
    keys = settings.keys
    say = Timeline()
    async with redis_client(settings) as redis:
        updates = Updates(redis, settings, SENDER)
        registry = WorkerRegistry(redis, keys)
        # every worker's own event stream, each read from where we were in it
        events = StreamFollower(redis, block_ms=500)
        started_at = f"{int(time.time() * 1000)}-0"

        async def next_event(match: Callable[[Any], bool]) -> Any:
            while True:
                for worker_id in await registry.ids():
                    events.follow(keys.worker_stream(worker_id, "events"), started_at)
                for _stream, message in await events.read():
                    if match(message):
                        return message

        config = AccountConfig(
            id=ACCOUNT, platform="sandbox", name="demo shop", monitor_interval_s=2.0
        )
        await updates.create(config)
        say(f"account {ACCOUNT} added (platform sandbox, no worker yet: the Master assigns one)")
        status: TaskStatus = await _step(
            "waiting for the worker to start the task…",
            30,
            lambda: next_event(lambda m: isinstance(m, TaskStatus) and m.account_id == ACCOUNT),
        )
        state = f"[yellow]{safe(status.state)}[/yellow]"
        say(f"worker {safe(status.worker_id)} runs the task: {state} — {safe(status.error)}")

        outcomes_from = await updates.tracker.last_outcome_id()
        request = (await start_login(redis, settings, ACCOUNT, 60, SENDER)).request
        say(f"login {request.session_id[:8]} requested from worker {safe(status.worker_id)}")
        qr: LoginQrCode = await _step(
            "waiting for the QR code…",
            60,
            lambda: next_event(
                lambda m: (
                    isinstance(m, LoginQrCode | LoginFailed) and m.session_id == request.session_id
                )
            ),
        )
        if isinstance(qr, LoginFailed):
            say(f"[red]login failed[/red]: {safe(qr.error)}")
            return EXIT_FAILED
        png = base64.b64decode(qr.png_b64)
        say(f"QR code shown ({len(png)} byte PNG captured from the login page in Chromium)")
        text = qr_to_text(png)
        if text and console.is_terminal:
            console.print(text, highlight=False)
        await anyio.to_thread.run_sync(
            _post, f"{site_url}/api/scan", {"user_id": USER_ID, "nickname": "demo shop"}
        )
        say(f"scanned with the (simulated) phone as user {USER_ID}")
        done = await _step(
            "waiting for the login to finish…",
            60,
            lambda: next_event(
                lambda m: (
                    isinstance(m, LoginSuccess | LoginFailed)
                    and getattr(m, "session_id", "") == request.session_id
                )
            ),
        )
        if isinstance(done, LoginFailed):
            say(f"[red]login failed[/red]: {safe(done.error)}")
            return EXIT_FAILED
        outcome = await _step(
            "waiting for the worker's ACK…",
            30,
            lambda: updates.tracker.wait_account_outcome(ACCOUNT, 1, outcomes_from, 30),
        )
        saved = await updates.store.get(ACCOUNT)
        say(
            f"Master saved platform_user_id {safe(saved.platform_user_id)} (config_version "
            f"{saved.config_version}) and sent master:account:config_update"
        )
        if outcome is None or outcome.status != "applied":
            say(f"[red]the update was not applied[/red]: {safe(outcome)}")
            return EXIT_FAILED
        say(
            f"worker {safe(outcome.worker_id)} applied version {outcome.version} without a restart "
            f"in [green]{outcome.latency_ms:.1f} ms[/green]"
        )
        running: TaskStatus = await _step(
            "waiting for the task to run…",
            30,
            lambda: next_event(
                lambda m: (
                    isinstance(m, TaskStatus) and m.account_id == ACCOUNT and m.state == "running"
                )
            ),
        )
        say(f"task [green]{safe(running.state)}[/green] at version {running.config_version}")

        for n, text in enumerate(("好看！", "在哪里买？", "已关注"), 1):
            await anyio.to_thread.run_sync(
                _post,
                f"{site_url}/api/comments",
                {"user_id": USER_ID, "text": text, "author": f"fan{n}"},
            )
        await anyio.to_thread.run_sync(
            _post, f"{site_url}/api/dms", {"user_id": USER_ID, "text": "在吗？", "author": "fan1"}
        )
        say("3 comments and a DM posted on the sandbox site")
        archive = Archive.of(settings, create=False)
        try:

            async def crawled() -> Any:
                # the Master stores each batch the worker sends; look until all are in
                while True:
                    with contextlib.suppress(DatabaseUnavailable):  # not created yet
                        counts = (await archive.counts([ACCOUNT]))[ACCOUNT]
                        if counts.comments >= 3 and counts.dms >= 1:
                            return counts
                    await anyio.sleep(0.2)

            counts = await _step("waiting for the crawler…", 30, crawled)
            newest = await archive.items(ACCOUNT, Filter(kind="comment", limit=3))
            say(
                f"crawled {counts.comments} comments and {counts.dms} DM, stored in the "
                f"database: " + ", ".join(f"“{safe(i.text)}”" for i in newest)
            )
            result = diagnose(await collect(redis, settings, archive=archive))
        finally:
            await archive.close()
        if result.healthy:
            say("hiscrm diagnose: [green]all green[/green]")
            return EXIT_OK
        for account in result.accounts:
            for p in account.problems:
                say(f"[red]{p.code}[/red]: {safe(p.message)}")
        return EXIT_FAILED
