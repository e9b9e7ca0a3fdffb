"""MonitorTask and TaskRunner in-process: swaps take hold at once, without a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from hiscrm_bus.accounts import MISSING_USER_ID, AccountConfig
from hiscrm_bus.limits import utcnow
from hiscrm_worker.platforms import CrawledItem, PlatformError, SessionExpired
from hiscrm_worker.platforms.base import Fetched
from hiscrm_worker.runner import TaskRunner
from hiscrm_worker.task import MonitorTask


class RecordingPlatform:
    """A Platform whose crawls tests can wait for."""

    name = "sandbox"

    def __init__(self) -> None:
        self.crawls: list[AccountConfig] = []
        self.crawled = anyio.Event()
        self.fail_with: str | None = None
        self.released: list[str] = []
        self.released_event = anyio.Event()
        self.left: list[int] = []  # what each crawl of comments says it left
        self.dms_left = 0
        self.expire = False
        self.checkpoints = 0
        self.dms_fail_with: str | None = None

    async def fetch_comments(self, account: AccountConfig) -> Fetched:
        self.crawls.append(account)
        self.crawled.set()
        self.crawled = anyio.Event()
        if self.expire:
            raise SessionExpired("sandbox session of acc-1 is not logged in")
        if self.fail_with:
            raise PlatformError(self.fail_with)
        n = len(self.crawls)
        item = CrawledItem(kind="comment", item_id=f"c{n}", text="hi", created_at=utcnow())
        return Fetched((item,), self.left.pop(0) if self.left else 0)

    async def fetch_dms(self, account: AccountConfig) -> Fetched:
        if self.dms_fail_with:
            raise PlatformError(self.dms_fail_with)
        return Fetched((), self.dms_left)

    async def login(self, account: AccountConfig, reporter: object) -> object:
        raise PlatformError("no login here")

    async def after_crawl(self, account: AccountConfig) -> None:
        self.checkpoints += 1

    async def release(self, account_id: str) -> None:
        self.released.append(account_id)
        self.released_event.set()


class States:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.changed = anyio.Event()

    def __call__(self, task: MonitorTask) -> None:
        self.seen.append(task.state)
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, task: MonitorTask, state: str) -> None:
        with anyio.fail_after(5):
            while task.state != state:
                await self.changed.wait()


class Expiries(list[str]):
    def __call__(self, task: MonitorTask, reason: str) -> None:
        self.append(reason)


@pytest.fixture
def expiries() -> Expiries:
    return Expiries()


@pytest.fixture
async def runner(
    expiries: Expiries,
) -> AsyncIterator[tuple[TaskRunner, RecordingPlatform, States]]:
    platform = RecordingPlatform()
    states = States()
    runner = TaskRunner({"sandbox": platform}, states, on_expired=expiries)
    async with anyio.create_task_group() as tg:
        await tg.start(runner.run)
        yield runner, platform, states
        tg.cancel_scope.cancel()


def config(**changes: object) -> AccountConfig:
    base = AccountConfig(id="acc-1", platform="sandbox", worker_id="w1", config_version=1)
    return base.model_copy(update=changes)


async def test_waits_for_login_then_crawls_as_soon_as_the_user_id_arrives(runner) -> None:
    r, platform, states = runner
    task = r.apply(config())
    await states.wait_for(task, "waiting_login")
    assert task.error == MISSING_USER_ID
    assert platform.crawls == []
    same = r.apply(config(platform_user_id="1864722759", config_version=2))
    assert same is task  # swapped, not restarted
    await states.wait_for(task, "running")
    assert platform.crawls[0].platform_user_id == "1864722759"
    assert task.report().applied_version == 2


async def test_shorter_interval_wakes_a_sleeping_task(runner) -> None:
    r, platform, states = runner
    task = r.apply(config(platform_user_id="u", monitor_interval_s=3600))
    await states.wait_for(task, "running")
    assert len(platform.crawls) == 1
    r.apply(config(platform_user_id="u", monitor_interval_s=0.05, config_version=2))
    with anyio.fail_after(5):
        while len(platform.crawls) < 4:
            await platform.crawled.wait()
    assert platform.crawls[-1].monitor_interval_s == 0.05


async def test_disable_stops_crawling_and_enable_restarts_it(runner) -> None:
    r, platform, states = runner
    task = r.apply(config(platform_user_id="u", monitor_interval_s=0.05))
    await states.wait_for(task, "running")
    r.apply(config(platform_user_id="u", monitor_interval_s=0.05, enabled=False, config_version=2))
    await states.wait_for(task, "disabled")
    count = len(platform.crawls)
    with anyio.move_on_after(0.3):  # a disabled task must not crawl in this window
        await platform.crawled.wait()
    assert len(platform.crawls) == count
    r.apply(config(platform_user_id="u", monitor_interval_s=0.05, config_version=3))
    await states.wait_for(task, "running")


async def test_platform_error_is_a_task_state_not_a_dead_task(runner) -> None:
    r, platform, states = runner
    platform.fail_with = "page did not load"
    task = r.apply(config(platform_user_id="u", monitor_interval_s=0.05))
    await states.wait_for(task, "error")
    assert task.error == "page did not load"
    platform.fail_with = None
    await states.wait_for(task, "running")
    assert task.error is None


async def test_stop_cancels_the_task(runner) -> None:
    r, platform, states = runner
    task = r.apply(config(platform_user_id="u", monitor_interval_s=0.05))
    await states.wait_for(task, "running")
    r.stop("acc-1")
    assert "acc-1" not in r
    with anyio.fail_after(5):  # released by a task the runner started
        await platform.released_event.wait()
    assert platform.released == ["acc-1"]
    assert task.state == "stopped"
    count = len(platform.crawls)
    with anyio.move_on_after(0.3):
        await platform.crawled.wait()
    assert len(platform.crawls) == count


async def test_the_report_says_how_many_items_the_last_crawl_left(runner) -> None:
    r, platform, states = runner
    platform.left = [910, 10]
    platform.dms_left = 3
    reported: list[int] = []  # items_left as each crawl hands its items over
    r.on_items = lambda task, items: reported.append(task.report().items_left)
    task = r.apply(config(platform_user_id="u", monitor_interval_s=3600))
    await states.wait_for(task, "running")
    assert reported == [913]  # comments and DMs
    r.apply(config(platform_user_id="u", monitor_interval_s=0.05, config_version=2))
    with anyio.fail_after(5):
        while task.crawls < 3:
            await platform.crawled.wait()
    assert reported[:3] == [913, 13, 3]  # the comments caught up; the DMs' 3 remain
    platform.fail_with = "page did not load"
    await states.wait_for(task, "error")
    assert task.report().items_left == 3  # a failed crawl does not pretend to catch up


async def test_a_good_crawl_keeps_the_session_a_failed_one_does_not(runner) -> None:
    r, platform, states = runner
    platform.fail_with = "page did not load"
    task = r.apply(config(platform_user_id="u", monitor_interval_s=0.05))
    await states.wait_for(task, "error")
    assert platform.checkpoints == 0
    platform.fail_with = None
    await states.wait_for(task, "running")
    with anyio.fail_after(5):
        while platform.checkpoints == 0:
            await platform.crawled.wait()
    assert platform.checkpoints >= 1


async def test_an_expired_session_is_reported_once_and_not_retried(
    runner, expiries: Expiries
) -> None:
    r, platform, states = runner
    platform.expire = True
    task = r.apply(config(platform_user_id="u", monitor_interval_s=0.01))
    await states.wait_for(task, "waiting_login")
    assert task.error == MISSING_USER_ID
    assert expiries == ["sandbox session of acc-1 is not logged in"]
    tried = len(platform.crawls)
    # the Master's update arrives: still waiting, still no crawl
    r.apply(config(platform_user_id="u", login_status="expired", config_version=2))
    await anyio.wait_all_tasks_blocked()
    assert task.state == "waiting_login" and len(platform.crawls) == tried == 1
    # a new login: crawling again
    platform.expire = False
    r.apply(config(platform_user_id="u", login_status="logged_in", config_version=3))
    await states.wait_for(task, "running")
    assert len(platform.crawls) > tried and expiries == [expiries[0]]


async def test_a_list_fetched_is_delivered_even_if_the_next_one_fails() -> None:
    """Comments taken, then the DM fetch fails: the comments still reach the sink (the
    platform counts them as taken, so dropping them would lose them for good)."""
    platform = RecordingPlatform()
    platform.dms_fail_with = "platform_changed: user_detail lacks user_list"
    delivered: list[CrawledItem] = []
    states = States()
    task = MonitorTask(
        config(platform_user_id="u", monitor_interval_s=60),
        platform,
        states,
        lambda _task, items: delivered.extend(items),
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run)
        await states.wait_for(task, "error")
        tg.cancel_scope.cancel()
    assert [i.item_id for i in delivered] == ["c1"]
    assert task.error == "platform_changed: user_detail lacks user_list"
