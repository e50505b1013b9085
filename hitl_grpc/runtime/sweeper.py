"""The background sweeper: expiry, SLA escalation and lapsed leases, on every replica."""

from __future__ import annotations

import asyncio
import logging

from hitl_grpc import tasks
from hitl_grpc.domain import errors
from hitl_grpc.domain.decisions import DecisionOperations, SweepReport

log = logging.getLogger("hitl_grpc.runtime.sweeper")


class Sweeper:
    """Runs DecisionOperations.sweep every interval; every replica may run one.

    Due is judged on the database's clock. Replicas split the due rows (on PostgreSQL
    each batch skips rows another replica's batch has locked), and each change is still
    a compare-and-set on version, so every row changes exactly once.
    """

    def __init__(self, decisions: DecisionOperations, *, interval_s: float) -> None:
        self._decisions = decisions
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.sweeps = 0
        self._swept = asyncio.Condition()

    async def sweep_once(self) -> SweepReport:
        """One pass over every kind of due work."""
        report = await self._decisions.sweep()
        async with self._swept:
            self.sweeps += 1
            self._swept.notify_all()
        if report != SweepReport():
            log.info(
                "sweep: %d expired, %d escalated, %d leases lapsed",
                report.expired,
                report.escalated,
                report.released,
            )
        return report

    async def wait_for_sweeps(self, count: int) -> None:
        """Returns once `count` sweeps have finished since the start."""
        async with self._swept:
            await self._swept.wait_for(lambda: self.sweeps >= count)

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except errors.Unavailable:
                log.warning("sweep skipped: database unavailable")
            except Exception:
                log.exception("sweep failed")
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        """Starts sweeping in the background."""
        self._task = asyncio.create_task(self._run(), name="hitl-sweeper")

    async def stop(self) -> None:
        """Stops sweeping; a sweep in progress is rolled back."""
        if self._task is not None:
            await tasks.stop(self._task)
            self._task = None
