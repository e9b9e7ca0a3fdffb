"""TaskRunner: the set of running MonitorTasks, one per account, in one task group.

A new task is registered at once (it holds its config, so the account counts as
applied) and its coroutine is started by one starter task right behind the caller, in
bulk: a reconcile taking over 10,000 accounts does not pay for 10,000 task starts before
it can ACK them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.workers import TaskReport

from .platforms import Platform
from .task import ExpiryListener, ItemSink, MonitorTask, StateListener

log = logging.getLogger(__name__)
# task coroutines started per turn of the event loop when many are queued at once
STARTS_PER_STEP = 500


@dataclass(slots=True)
class _Running:
    task: MonitorTask
    # made when its coroutine starts (a task stopped before that never needs one)
    scope: anyio.CancelScope | None = None


class TaskRunner:
    def __init__(
        self,
        platforms: dict[str, Platform],
        on_state: StateListener,
        on_items: ItemSink | None = None,
        on_expired: ExpiryListener | None = None,
    ) -> None:
        self.platforms = platforms
        self.on_state = on_state
        self.on_items = on_items
        self.on_expired = on_expired
        self._tasks: dict[str, _Running] = {}
        self._tg: TaskGroup | None = None
        # registered, not started yet (see _start_queued)
        self._queued: list[_Running] = []
        self._starting = False  # a _start_queued is scheduled or running
        self._holds = 0  # open deferred() blocks

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    def __contains__(self, account_id: str) -> bool:
        return account_id in self._tasks

    def ids(self) -> list[str]:
        return list(self._tasks)

    def get(self, account_id: str) -> MonitorTask | None:
        running = self._tasks.get(account_id)
        return running.task if running else None

    def reports(self) -> dict[str, TaskReport]:
        return {a: r.task.report() for a, r in self._tasks.items()}

    def apply(self, config: AccountConfig, *, quiet: bool = False) -> MonitorTask:
        """Swap the running task's config, or start a task for a new account.
        ``quiet``: not logged per account (the caller sums up)."""
        running = self._tasks.get(config.id)
        if running is not None and running.task.platform.name == config.platform:
            running.task.swap(config, quiet=quiet)
            return running.task
        if running is not None:  # platform changed: a different crawler altogether
            self.stop(config.id)
        return self._start(config, quiet)

    def _start(self, config: AccountConfig, quiet: bool) -> MonitorTask:
        if self._tg is None:
            raise RuntimeError("TaskRunner is not running")
        platform = self.platforms[config.platform]
        task = MonitorTask(config, platform, self.on_state, self.on_items, self.on_expired)
        running = _Running(task)
        self._tasks[config.id] = running
        self._queued.append(running)
        self._schedule()
        if not quiet:
            log.info("account %s: task started (version %d)", config.id, config.config_version)
        return task

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within this block, tasks are registered but not started: a reconcile ACKs
        what it applied before 10,000 new tasks take their first steps."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            self._schedule()

    def _schedule(self) -> None:
        if self._queued and not self._holds and not self._starting and self._tg is not None:
            self._starting = True
            self._tg.start_soon(self._start_queued, name="monitor-starter")

    async def _start_queued(self) -> None:
        """Start the registered tasks' coroutines, in order, letting the event loop run
        between chunks; a task stopped before its start is skipped."""
        try:
            while self._queued and not self._holds and self._tg is not None:
                chunk = self._queued[:STARTS_PER_STEP]
                del self._queued[:STARTS_PER_STEP]
                for running in chunk:
                    task = running.task
                    if self._tasks.get(task.account_id) is running:
                        running.scope = anyio.CancelScope()
                        self._tg.start_soon(
                            self._run_task, task, running.scope, name=f"monitor:{task.account_id}"
                        )
                await anyio.lowlevel.checkpoint()
        finally:
            self._starting = False

    async def _run_task(self, task: MonitorTask, scope: anyio.CancelScope) -> None:
        """Run the task until it is stopped; a bug it trips over restarts it after a
        pause instead of ending the worker (every task shares one task group)."""
        pause = 1.0
        with scope:
            while True:
                try:
                    await task.run()
                    return
                except Exception as exc:
                    log.exception("account %s: task failed; restarting it", task.account_id)
                    task.error = f"task failed: {type(exc).__name__}: {exc}"[:2000]
                    await anyio.sleep(pause)
                    pause = min(pause * 2, 60.0)

    def stop(self, account_id: str) -> None:
        running = self._tasks.pop(account_id, None)
        if running is not None:
            if running.scope is not None:
                running.scope.cancel()
            running.task.state = "stopped"
            log.info("account %s: task stopped", account_id)
            self.on_state(running.task)
            if self._tg is not None:
                # free what the platform holds for it (its browser context)
                self._tg.start_soon(running.task.platform.release, account_id)
