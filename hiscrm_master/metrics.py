"""Prometheus metrics of the Master, on an opt-in port.

Update counts are fleet-wide (read from the Redis counters that every Master, worker
and CLI update); the publish→applied latency histogram counts the ACKs this Master
resolved; workers and tasks come from the heartbeats."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from threading import Thread
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hiscrm_bus.accounts import LOGIN_STATUSES
from hiscrm_bus.workers import WorkerInfo

OUTCOMES = ("sent", "applied", "rejected", "retried", "failed")


class MasterMetrics(Collector):
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "hiscrm_update_latency_seconds",
            "Time from recording a config update to the worker's ACK resolving it.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self._stats: dict[str, int] = {}
        self._alive = 0
        self._tasks: Counter[str] = Counter()
        self._logins: Counter[str] = Counter()
        self.registry.register(self)
        self._server: Any = None
        self._thread: Thread | None = None

    def refresh(
        self, stats: dict[str, int], alive: list[WorkerInfo], logins: Counter[str] | None = None
    ) -> None:
        self._stats = dict(stats)
        self._alive = len(alive)
        self._tasks = Counter(t.state for w in alive for t in w.tasks.values())
        self._logins = logins or Counter()

    def collect(self) -> Iterator[Metric]:
        for outcome in OUTCOMES:
            family = CounterMetricFamily(
                f"hiscrm_updates_{outcome}", f"Config updates {outcome} (fleet-wide)."
            )
            family.add_metric([], self._stats.get(outcome, 0))
            yield family
        yield GaugeMetricFamily(
            "hiscrm_workers_alive", "Workers with a live heartbeat.", value=self._alive
        )
        tasks = GaugeMetricFamily("hiscrm_tasks", "Monitor tasks by state.", labels=["state"])
        for state in ("waiting_login", "running", "disabled", "error", "starting"):
            tasks.add_metric([state], self._tasks.get(state, 0))
        yield tasks
        logins = GaugeMetricFamily(
            "hiscrm_accounts_by_login", "Accounts by login status.", labels=["status"]
        )
        for status in LOGIN_STATUSES:
            logins.add_metric([status], self._logins.get(status, 0))
        yield logins

    def serve(self, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
