"""Driving a load: concurrent callers, their throughput and latency, one result line."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Measured:
    """Throughput and latency of one driven load."""

    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def calls_per_s(self) -> float:
        """Completed calls per second of wall time."""
        return self.calls / self.seconds if self.seconds else 0.0


async def drive(call: Callable[[], Awaitable[object]], *, concurrency: int, total: int) -> Measured:
    """Runs `total` calls from `concurrency` concurrent callers; errors are counted, not raised."""
    latencies: list[float] = []
    errors = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                await call()
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Measured(
        calls=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=statistics.median(latencies) * 1000 if latencies else 0.0,
        p99_ms=latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0.0,
    )


def report(name: str, value: float, ceiling: float, unit: str) -> None:
    """One result line: the figure, its ceiling from the same run, and the ratio."""
    ratio = value / ceiling if ceiling else float("nan")
    print(
        f"{name:<48} {value:>12.1f} {unit:<8} ceiling {ceiling:>12.1f} {unit:<8} ratio {ratio:6.2f}"
    )
