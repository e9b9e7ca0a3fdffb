"""TaskRunner: the set of running MonitorTasks, one per account, in one task group."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus

from hiscrm_bus.accounts import AccountConfig
from hiscrm_bus.workers import TaskReport

from .platforms import Platform
from .task import ExpiryListener, ItemSink, MonitorTask, StateListener

log = logging.getLogger(__name__)


@dataclass
class _Running:
    task: MonitorTask
    scope: anyio.CancelScope


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

    def apply(self, config: AccountConfig) -> MonitorTask:
        """Swap the running task's config, or start a task for a new account."""
        running = self._tasks.get(config.id)
        if running is not None and running.task.platform.name == config.platform:
            running.task.swap(config)
            return running.task
        if running is not None:  # platform changed: a different crawler altogether
            self.stop(config.id)
        return self._start(config)

    def _start(self, config: AccountConfig) -> MonitorTask:
        if self._tg is None:
            raise RuntimeError("TaskRunner is not running")
        platform = self.platforms[config.platform]
        task = MonitorTask(config, platform, self.on_state, self.on_items, self.on_expired)
        scope = anyio.CancelScope()
        self._tasks[config.id] = _Running(task, scope)
        self._tg.start_soon(self._run_task, task, scope, name=f"monitor:{config.id}")
        log.info("account %s: task started (version %d)", config.id, config.config_version)
        return task

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
            running.scope.cancel()
            running.task.state = "stopped"
            log.info("account %s: task stopped", account_id)
            self.on_state(running.task)
            if self._tg is not None:
                # free what the platform holds for it (its browser context)
                self._tg.start_soon(running.task.platform.release, account_id)
