"""Health follows the database: NOT_SERVING while it is unreachable, SERVING once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from sqlalchemy import text

from hitl_grpc.store.uow import UnitOfWorkFactory

log = logging.getLogger("hitl_grpc.db_monitor")


class DatabaseMonitor:
    """Probes the database every interval and sets every service's health from it."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        health: HealthServicer,
        services: Sequence[str],
        *,
        interval_s: float,
        timeout_s: float,
    ) -> None:
        self._uow = uow
        self._health = health
        self._services = tuple(services)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    async def probe(self) -> bool:
        """Whether the database answers a trivial query within the timeout."""
        try:
            # A unit of work: the same deadline, and the same detached checkout, as RPCs.
            async with asyncio.timeout(self._timeout_s), self._uow(readonly=True) as unit:
                await unit.connection.execute(text("SELECT 1"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure to answer is "down"; the reason is logged
            if self.healthy:
                log.warning("database unreachable: %s", type(exc).__name__)
            return False
        return True

    async def check_once(self) -> bool:
        """Probes once and publishes a change of state."""
        healthy = await self.probe()
        if healthy != self.healthy:
            self.healthy = healthy
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if healthy
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in self._services:
                await self._health.set(name, status)
            log.warning("database %s", "reachable again" if healthy else "down: NOT_SERVING")
        return healthy

    async def _run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        """Starts probing in the background."""
        self._task = asyncio.create_task(self._run(), name="hitl-db-monitor")

    async def stop(self) -> None:
        """Stops probing."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
