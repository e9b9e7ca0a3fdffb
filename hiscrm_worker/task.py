"""MonitorTask: one account's crawl loop, whose config can be swapped while it runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import anyio

from hiscrm_bus.accounts import MISSING_USER_ID, AccountConfig
from hiscrm_bus.limits import utcnow
from hiscrm_bus.messages import TaskState
from hiscrm_bus.workers import TaskReport

from .platforms import CrawledItem, Platform, PlatformError, SessionExpired

log = logging.getLogger(__name__)
StateListener = Callable[["MonitorTask"], None]
ItemSink = Callable[["MonitorTask", list[CrawledItem]], None]
ExpiryListener = Callable[["MonitorTask", str], None]


class MonitorTask:
    """Crawls one account every ``monitor_interval_s`` while it is enabled and logged in.

    :meth:`swap` replaces the config in one assignment and wakes the loop, so a task
    waiting for login starts at once when ``platform_user_id`` arrives, and a shorter
    interval cuts a sleep short.

    A crawl takes what is new since the last one, at most ``max_items_per_crawl`` per
    list; what the platform had to leave is ``items_left`` in the report, and the next
    crawls (at the usual interval: the bound is what keeps a crawl's work small) take it.
    """

    def __init__(
        self,
        config: AccountConfig,
        platform: Platform,
        on_state: StateListener,
        on_items: ItemSink | None = None,
        on_expired: ExpiryListener | None = None,
    ) -> None:
        self.config = config
        self.platform = platform
        self.on_state = on_state
        self.on_items = on_items
        self.on_expired = on_expired
        # the version whose session the platform refused: no retries until it changes
        self._expired_version: int | None = None
        self.state: TaskState = "starting"
        self.error: str | None = None
        self.crawls = 0
        self.items = 0
        self.items_left = 0  # what the last crawl had to leave (see platforms.paging)
        self.last_crawl_at: datetime | None = None
        # set (and replaced) by swap; made when the loop first waits on it
        self._changed: anyio.Event | None = None

    @property
    def account_id(self) -> str:
        return self.config.id

    def swap(self, config: AccountConfig, *, quiet: bool = False) -> None:
        old, self.config = self.config, config
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        if quiet:
            return
        log.info(
            "updated account config in MonitorTask for %s (version %d -> %d)",
            config.id,
            old.config_version,
            config.config_version,
        )

    def report(self) -> TaskReport:
        return TaskReport(
            applied_version=self.config.config_version,
            state=self.state,
            error=self.error,
            crawls=self.crawls,
            items=self.items,
            items_left=self.items_left,
            last_crawl_at=self.last_crawl_at,
        )

    def _set_state(self, state: TaskState, error: str | None = None) -> None:
        if (state, error) != (self.state, self.error):
            self.state, self.error = state, error
            if state == "error":
                log.error("account %s: %s", self.account_id, error)
            elif state == "waiting_login":
                # expected until someone logs in (and 10,000 at a worker's start): the
                # Master logs the task's state; diagnose and `account list --needs-login`
                # say what to do
                log.info("account %s: %s", self.account_id, error)
            else:
                log.info("account %s: task %s", self.account_id, state)
            self.on_state(self)

    async def run(self) -> None:
        """Crawl when due. A swap wakes the loop, which then re-decides: a task that can
        now run crawls at once, a shorter interval brings the next crawl forward, and a
        change that affects neither (a name) does not cause an extra crawl."""
        last_crawl: float | None = None  # monotonic time of the last crawl
        try:
            while True:
                if self._changed is None:
                    self._changed = anyio.Event()
                config, changed = self.config, self._changed
                if not config.enabled:
                    self._set_state("disabled")
                    await changed.wait()
                    continue
                if (
                    not config.platform_user_id
                    or config.login_status == "expired"
                    or config.config_version == self._expired_version
                ):
                    self._set_state("waiting_login", MISSING_USER_ID)
                    await changed.wait()
                    last_crawl = None  # logged in now: crawl at once
                    continue
                now = anyio.current_time()
                due = now if last_crawl is None else last_crawl + config.monitor_interval_s
                if now >= due:
                    last_crawl = now
                    await self._crawl(config)
                    continue
                if self.state in ("starting", "disabled", "waiting_login"):
                    self._set_state("running")  # back on its crawl schedule
                with anyio.move_on_after(due - now):
                    await changed.wait()
        finally:
            self.state = "stopped"

    def _deliver(self, items: list[CrawledItem]) -> None:
        if items and self.on_items is not None:
            self.on_items(self, items)

    async def _crawl(self, config: AccountConfig) -> None:
        items: list[CrawledItem] = []
        try:
            left = 0
            if config.crawl_comments:
                got = await self.platform.fetch_comments(config)
                items += got.items
                left += got.left
            if config.crawl_dms:
                got = await self.platform.fetch_dms(config)
                items += got.items
                left += got.left
        except SessionExpired as exc:
            self._deliver(items)  # a list fetched is the platform's: it counts it as taken
            # a dead session is not retried: the Master records the expiry as an update
            # and the task waits for a login, like one that never had one
            self._expired_version = config.config_version
            log.warning("account %s: %s", config.id, exc)
            if self.on_expired is not None:
                self.on_expired(self, str(exc))
            return
        except PlatformError as exc:
            self._deliver(items)
            self._set_state("error", str(exc))
            return
        except Exception as exc:
            self._deliver(items)
            log.exception("account %s: crawl failed", config.id)
            self._set_state("error", f"crawl failed: {type(exc).__name__}: {exc}")
            return
        self.crawls += 1
        self.items += len(items)
        self.last_crawl_at = utcnow()
        if left and not self.items_left:
            log.info(
                "account %s: %d new items left for the next crawls (max_items_per_crawl %d)",
                config.id,
                left,
                config.max_items_per_crawl,
            )
        elif self.items_left and not left:
            log.info("account %s: caught up with the items left before", config.id)
        self.items_left = left
        self._deliver(items)
        self._set_state("running")
        await self.platform.after_crawl(config)
