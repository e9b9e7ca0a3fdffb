"""Worker liveness and account placement: a dead worker's accounts move to live ones,
unowned accounts get an owner. Each move is a config update like any other."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from redis import exceptions as rexc
from redis.asyncio import Redis

from hiscrm_bus.connection import call, is_transient
from hiscrm_bus.errors import AccountNotFound, InvalidAccountConfig, VersionConflict
from hiscrm_bus.messages import UpdateReason
from hiscrm_bus.workers import WorkerInfo, WorkerRegistry

from .settings import MasterSettings
from .updates import Updates

log = logging.getLogger(__name__)
# dead workers one pass looks at (and names in its log line): the index may hold
# thousands of names a worker added; the next passes take the rest in turn
DEAD_PER_PASS = 200
NAMES_IN_A_LINE = 10


class Assigner:
    def __init__(self, redis: Redis, settings: MasterSettings, updates: Updates) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = settings.keys
        self.updates = updates
        self.registry = WorkerRegistry(redis, self.keys, prune=True)
        self._offline_logged: set[str] = set()
        self._uncounted: set[str] = set()  # live workers whose account set is unreadable
        self._dead_turn = 0
        self._invalid_logged: set[str] = set()
        self._unplaceable: set[str] = set()

    async def lease(self) -> bool:
        """Hold a short lease so one Master at a time moves accounts."""
        key = self.keys.lock("assignment")
        ttl = int(self.settings.liveness_interval_s * 3000)
        me = self.settings.master_id
        if await call(self.redis.set(key, me, nx=True, px=ttl)):
            return True
        holder = await call(self.redis.get(key))
        if holder is not None and holder in (me, me.encode()):
            await call(self.redis.pexpire(key, ttl))
            return True
        return False

    async def run_once(self) -> int:
        """One pass; returns how many accounts were placed."""
        if not await self.lease():
            return 0
        alive, dead = await self.registry.all()
        unowned = await self.updates.store.unassigned_ids()
        # what was logged once is kept only for the accounts and workers still waiting
        # for a place (an account removed, placed by another Master or whose worker
        # came back is no longer one of them; if it waits again, that is news)
        self._offline_logged.intersection_update(w for w, _last in dead)
        waiting = set(unowned)
        if not dead and not unowned:
            self._invalid_logged.clear()
            self._unplaceable.clear()
            return 0  # nothing to place: no need to count every worker's accounts
        loads = await self._loads(alive)
        alive = [w for w in alive if w.id in loads]
        placed = 0
        batch = self._dead_batch([w for w, _last in dead])
        owned = await self.updates.store.owned_by_each(batch)
        newly: list[str] = []
        moving = 0
        forget: list[str] = []
        for worker_id, accounts in zip(batch, owned, strict=True):
            if isinstance(accounts, Exception):
                if worker_id not in self._offline_logged:
                    log.error(
                        "worker %s is offline and its account set cannot be read: %s",
                        worker_id,
                        accounts,
                    )
                    self._offline_logged.add(worker_id)
                continue
            waiting.update(accounts)
            if worker_id not in self._offline_logged:
                newly.append(worker_id)
                moving += len(accounts)
                self._offline_logged.add(worker_id)
            moved, left = await self._place(accounts, alive, loads, "failover")
            placed += moved
            if not left:
                forget.append(worker_id)
        if newly:
            shown = ", ".join(newly[:NAMES_IN_A_LINE])
            more = (
                f" and {len(newly) - NAMES_IN_A_LINE} more" if len(newly) > NAMES_IN_A_LINE else ""
            )
            log.warning(
                "%d worker(s) offline (heartbeat expired): %s%s; moving their %d account(s)",
                len(newly),
                shown,
                more,
                moving,
            )
        if forget:
            await self.registry.forget(*forget)
            self._offline_logged.difference_update(forget)
        if unowned:
            moved, _left = await self._place(unowned, alive, loads, "assignment")
            placed += moved
        self._invalid_logged.intersection_update(waiting)
        self._unplaceable.intersection_update(waiting)
        return placed

    def _dead_batch(self, dead: list[str]) -> list[str]:
        """At most ``DEAD_PER_PASS`` of ``dead``, taking turns over passes (so dead
        workers whose accounts cannot move yet do not hold the others up)."""
        if len(dead) <= DEAD_PER_PASS:
            return dead
        start = self._dead_turn % len(dead)
        self._dead_turn = start + DEAD_PER_PASS
        return (dead[start:] + dead[:start])[:DEAD_PER_PASS]

    async def _loads(self, alive: Sequence[WorkerInfo]) -> dict[str, int]:
        """Each live worker's account count; a worker whose account set Redis refuses
        (WRONGTYPE) is left out (it gets no account), told once."""
        counts = await self.updates.store.counts_of_workers([w.id for w in alive])
        self._uncounted.intersection_update(w.id for w in alive)
        loads: dict[str, int] = {}
        for worker, n in zip(alive, counts, strict=True):
            if isinstance(n, Exception):
                if worker.id not in self._uncounted:
                    log.error(
                        "worker %s gets no account: its account set cannot be read: %s",
                        worker.id,
                        n,
                    )
                    self._uncounted.add(worker.id)
                continue
            if worker.id in self._uncounted:
                log.warning("worker %s: its account set is readable again", worker.id)
                self._uncounted.discard(worker.id)
            loads[worker.id] = n
        return loads

    async def _place(
        self,
        account_ids: Sequence[str],
        alive: Sequence[WorkerInfo],
        loads: dict[str, int],
        reason: UpdateReason,
    ) -> tuple[int, int]:
        """Give each account to the least-loaded live worker for its platform with room.
        Returns (placed, left without a worker)."""
        placed = left = 0
        for account_id in account_ids:
            try:
                config = await self.updates.store.get(account_id)
            except AccountNotFound:
                self._invalid_logged.discard(account_id)
                self._unplaceable.discard(account_id)
                continue
            except InvalidAccountConfig as exc:
                # its own problem (diagnose names the field): it moves once repaired;
                # every other account is placed meanwhile
                self._cannot_place(account_id, exc)
                left += 1
                continue
            except rexc.ResponseError as exc:
                if is_transient(exc):
                    raise
                if account_id not in self._invalid_logged:
                    log.error("account %s cannot be read: %s", account_id, exc)
                    self._invalid_logged.add(account_id)
                left += 1
                continue
            candidates = [
                w for w in alive if w.supports(config.platform) and loads.get(w.id, 0) < w.capacity
            ]
            if not candidates:
                self._invalid_logged.discard(account_id)  # it validates now
                if account_id not in self._unplaceable:  # once per episode, not per pass
                    log.warning(
                        "account %s: no live worker with room for platform %s",
                        account_id,
                        config.platform,
                    )
                    self._unplaceable.add(account_id)
                left += 1
                continue
            self._unplaceable.discard(account_id)
            target = min(candidates, key=lambda w: (loads.get(w.id, 0), w.id))
            try:
                result, sent = await self.updates.change(
                    account_id,
                    {"worker_id": target.id},
                    reason,
                    expect_version=config.config_version,
                )
            except (VersionConflict, AccountNotFound):
                continue  # changed meanwhile; the next pass looks again
            except InvalidAccountConfig as exc:
                # the change itself is refused (a version that cannot go higher): its
                # own problem, as an account that does not validate
                self._cannot_place(account_id, exc)
                left += 1
                continue
            self._invalid_logged.discard(account_id)
            loads[target.id] = loads.get(target.id, 0) + 1
            placed += 1
            log.info(
                "account %s assigned to worker %s (%s, was %s), version %d, update %s",
                account_id,
                target.id,
                reason,
                config.worker_id or "unassigned",
                result.version,
                sent.update_id if sent else "-",
            )
        return placed, left

    def _cannot_place(self, account_id: str, why: Exception) -> None:
        """Tell once (until it is placed or validates again) why an account cannot be."""
        if account_id not in self._invalid_logged:
            log.error("account %s cannot be placed: %s", account_id, why)
            self._invalid_logged.add(account_id)
