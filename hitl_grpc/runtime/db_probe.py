"""Health follows the database: NOT_SERVING while it is unreachable, SERVING once it is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio

from hitl_grpc import tasks
from hitl_grpc.store.door import Door

log = logging.getLogger("hitl_grpc.runtime.db_probe")


class DatabaseMonitor(tasks.Periodic):
    """Probes the database every interval and sets every service's health from it.

    Probes start at a fixed rate and each is bounded by the door, for at most one
    interval: a fault is NOT_SERVING within two intervals, and no probe outlives its
    interval to report a stale verdict after the database is back.
    """

    def __init__(
        self,
        door: Door,
        health: aio.HealthServicer,
        services: Sequence[str],
        *,
        interval_s: float,
        on_probe: Callable[[float, bool], None] | None = None,
    ) -> None:
        super().__init__(name="hitl-db-monitor", interval_s=interval_s)
        self._on_probe = on_probe
        self._door = door
        self._health = health
        self._services = tuple(services)
        self._timeout_s = min(interval_s, door.timeout_s or interval_s)
        self.healthy = True

    async def probe(self) -> bool:
        """Whether the database answers a trivial query within the probe's deadline."""
        started = time.perf_counter()
        try:
            await self._door.ping(timeout_s=self._timeout_s)
        except Exception as exc:  # any failure to answer is "down"; the reason is logged
            if self.healthy:
                log.warning("database unreachable: %s", exc)
            answered = False
        else:
            answered = True
        if self._on_probe is not None:
            self._on_probe(time.perf_counter() - started, answered)
        return answered

    async def step(self) -> None:
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
