"""The service's Prometheus metrics beyond per-RPC counts: queue, sweeper, watchers, database.

Everything lives in the server's own registry (no global state), so several servers in
one process, as in the tests, never share a sample. With HITL_WORKERS > 1 each worker
writes its samples to prometheus_client's multiprocess files and the supervisor serves
them all (`workers_registry`): counters and histograms add up over the workers, gauges
say how in their `multiprocess_mode`.
"""

from __future__ import annotations

import platform
import time
from importlib import metadata
from typing import Final

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.multiprocess import MultiProcessCollector

from hitl_grpc import tasks
from hitl_grpc.domain import errors
from hitl_grpc.domain.decisions import DecisionOperations, SweepReport
from hitl_grpc.domain.values import Priority
from hitl_grpc.events.hub import EventHub
from hitl_grpc.store.door import Door

LAG_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PROBE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def build_version() -> str:
    """This build's package version."""
    try:
        return metadata.version("hitl-grpc")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_info(registry: CollectorRegistry) -> None:
    """The hitl_build info sample."""
    Info("hitl_build", "The running build", registry=registry).info(
        {
            "version": build_version(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        }
    )


def workers_registry(directory: str) -> CollectorRegistry:
    """What the supervisor serves: every worker's samples (from their multiprocess files
    in `directory`), the build, and the supervisor's own process."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]  # untyped upstream
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    build_info(registry)
    return registry


class ServiceMetrics:
    """Build, process, queue, sweeper, watcher and database samples of one server."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        build_info(registry)
        self.queue_open = Gauge(
            "hitl_queue_open",
            "Open decisions by status, as of the last queue read",
            ["status"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.queue_pending = Gauge(
            "hitl_queue_pending",
            "PENDING decisions by priority, as of the last queue read",
            ["priority"],
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.sla_breaches = Gauge(
            "hitl_sla_breaches_last_24h",
            "Verdicts of the last 24 hours made after their SLA deadline",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.queue_read = Gauge(
            "hitl_queue_read_timestamp_seconds",
            "When the queue gauges were last read from the database",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )
        self.sweeps = Counter(
            "hitl_sweeper_actions_total",
            "Changes the sweeper made, by kind",
            ["action"],
            registry=registry,
        )
        self.watchers = Gauge(
            "hitl_watchers",
            "Open WatchPending and WatchDecision streams",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.cut_offs = Counter(
            "hitl_watchers_cut_off_total",
            "Watchers ended with RESOURCE_EXHAUSTED for falling behind the event stream",
            registry=registry,
        )
        self.event_lag = Histogram(
            "hitl_event_lag_seconds",
            "From a decision's change (database clock) to its event's fan-out here",
            registry=registry,
            buckets=LAG_BUCKETS,
        )
        self.connections = Gauge(
            "hitl_db_connections_in_use",
            "Pooled database connections checked out now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.event_reads = Counter(
            "hitl_event_reads_total",
            "Reads of the event log by the event reader (one per wake-up it serves)",
            registry=registry,
        )
        self.probe = Histogram(
            "hitl_db_probe_seconds",
            "Time for the health probe's query to answer",
            registry=registry,
            buckets=PROBE_BUCKETS,
        )
        self.probe_failures = Counter(
            "hitl_db_probe_failures_total",
            "Health probes the database did not answer in time",
            registry=registry,
        )

        self.sign_ins = Counter(
            "hitl_sign_ins_total",
            "Sign-in attempts by step (password, mfa) and outcome",
            ["step", "outcome"],
            registry=registry,
        )
        self.lockouts = Counter(
            "hitl_lockouts_total",
            "Sign-in locks started, by what was locked (user, mfa, peer)",
            ["scope"],
            registry=registry,
        )
        self.oldest_open_age = Gauge(
            "hitl_queue_oldest_open_age_seconds",
            "Age of the oldest open decision (0 when none is open), as of the last queue read",
            registry=registry,
            multiprocess_mode="livemostrecent",
        )

    def signed_in(self, step: str, outcome: str) -> None:
        """Counts one sign-in step's outcome."""
        self.sign_ins.labels(step, outcome).inc()

    def locked_out(self, scope: str) -> None:
        """Counts one lock that started."""
        self.lockouts.labels(scope).inc()

    def fanned_out(self, lag_s: float) -> None:
        """Records how long after its change one event reached this process's watchers."""
        self.event_lag.observe(lag_s)

    def swept(self, report: SweepReport) -> None:
        """Counts what one sweep changed."""
        self.sweeps.labels("expired").inc(report.expired)
        self.sweeps.labels("escalated").inc(report.escalated)
        self.sweeps.labels("lease_lapsed").inc(report.released)

    def probed(self, elapsed_s: float, answered: bool) -> None:
        """Records one health probe."""
        if answered:
            self.probe.observe(elapsed_s)
        else:
            self.probe_failures.inc()


class Gauges(tasks.Periodic):
    """Sets the gauges every interval, on the loop that owns what they count: watchers and
    pool now, and the queue's counts (one query per replica per interval)."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        decisions: DecisionOperations,
        hub: EventHub,
        door: Door,
        *,
        interval_s: float,
    ) -> None:
        super().__init__(name="hitl-gauges", interval_s=interval_s)
        self._metrics = metrics
        self._decisions = decisions
        self._hub = hub
        self._door = door

    async def step(self) -> None:
        """One reading; a database outage keeps the queue's last values (and their time)."""
        self._metrics.watchers.set(self._hub.watchers)
        self._metrics.connections.set(self._door.connections_in_use())
        try:
            stats = await self._decisions.stats()
        except errors.Unavailable:
            return
        metrics = self._metrics
        metrics.queue_open.labels("PENDING").set(stats.pending)
        metrics.queue_open.labels("IN_REVIEW").set(stats.in_review)
        metrics.queue_open.labels("ESCALATED").set(stats.escalated)
        for priority in Priority:
            metrics.queue_pending.labels(priority.name).set(
                stats.pending_by_priority.get(priority, 0)
            )
        metrics.sla_breaches.set(stats.last_24h.sla_breaches)
        oldest = stats.oldest_open_age
        metrics.oldest_open_age.set(oldest.total_seconds() if oldest is not None else 0)
        metrics.queue_read.set(time.time())
