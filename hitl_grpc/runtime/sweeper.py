"""The background sweeper: expiry, SLA escalation and lapsed leases, on every replica."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from hitl_grpc import tasks
from hitl_grpc.domain import errors, request_id
from hitl_grpc.domain.decisions import DecisionOperations, SweepReport

log = logging.getLogger("hitl_grpc.runtime.sweeper")


class Sweeper(tasks.Periodic):
    """Runs DecisionOperations.sweep every interval; every replica may run one.

    Due is judged on the database's clock. Replicas split the due rows (on PostgreSQL
    each batch skips rows another replica's batch has locked), and each change is still
    a compare-and-set on version, so every row changes exactly once. Stopping rolls a
    sweep in progress back.
    """

    def __init__(
        self,
        decisions: DecisionOperations,
        *,
        interval_s: float,
        on_report: Callable[[SweepReport], None] | None = None,
    ) -> None:
        super().__init__(name="hitl-sweeper", interval_s=interval_s)
        self._decisions = decisions
        self._on_report = on_report

    async def sweep_once(self) -> SweepReport:
        """One pass over every kind of due work."""
        # No call caused it: the pass gets an id of its own, on its audit rows and log line.
        pass_id = f"sweep-{uuid.uuid4().hex}"
        with request_id.bound(pass_id):
            report = await self._decisions.sweep()
        if self._on_report is not None:
            self._on_report(report)
        if report != SweepReport():
            log.info(
                "sweep: %d expired, %d escalated, %d leases lapsed",
                report.expired,
                report.escalated,
                report.released,
                extra={"request_id": pass_id},
            )
        return report

    async def step(self) -> None:
        """One sweep; a database outage skips it."""
        try:
            await self.sweep_once()
        except errors.Unavailable:
            log.warning("sweep skipped: database unavailable")
