"""Driving a load: concurrent callers, their throughput and latency, one result line."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import grpc


@dataclass(frozen=True)
class Measured:
    """Throughput and latency of one driven load."""

    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    # CPU seconds (user + system) the server process spent during the load, if measured.
    server_cpu_s: float | None = None

    @property
    def calls_per_s(self) -> float:
        """Completed calls per second of wall time."""
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_call(self) -> float | None:
        """The server's CPU time per completed call: the figure that holds on a busy machine."""
        if self.server_cpu_s is None or not self.calls:
            return None
        return self.server_cpu_s / self.calls * 1000


_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        # Fields after the command name, which sits in parentheses and may hold spaces.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def drive(
    call: Callable[[], Awaitable[object]],
    *,
    concurrency: int,
    total: int,
    server_pid: int | None = None,
) -> Measured:
    """Runs `total` calls from `concurrency` concurrent callers; errors are counted, not raised.

    With `server_pid`, also measures that process's CPU time over the load.
    """
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

    cpu_before = cpu_seconds(server_pid) if server_pid else None
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(server_pid) - cpu_before if server_pid and cpu_before is not None else None
    latencies.sort()
    return Measured(
        calls=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=statistics.median(latencies) * 1000 if latencies else 0.0,
        p99_ms=latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0.0,
        server_cpu_s=cpu,
    )


def report_calls(name: str, measured: Measured, ceiling: Measured) -> None:
    """Calls/s and the server's CPU per call, each beside the no-op server's in this run."""
    report(f"{name} calls/s", measured.calls_per_s, ceiling.calls_per_s, "calls/s")
    cpu, floor = measured.cpu_ms_per_call, ceiling.cpu_ms_per_call
    if cpu is not None and floor:
        print(
            f"  server CPU {cpu:.3f} ms/call, no-op {floor:.3f} ms/call: {cpu / floor:.1f}x;"
            f" p50 {measured.p50_ms:.2f} ms p99 {measured.p99_ms:.2f} ms errors {measured.errors}"
        )


def report(name: str, value: float, ceiling: float, unit: str) -> None:
    """One result line: the figure, its ceiling from the same run, and the ratio."""
    ratio = value / ceiling if ceiling else float("nan")
    print(
        f"{name:<48} {value:>12.1f} {unit:<8} ceiling {ceiling:>12.1f} {unit:<8} ratio {ratio:6.2f}"
    )


# Rounds of a budgeted figure, each measured right beside the no-op server's own.
ROUNDS: Final = 3


@dataclass(frozen=True)
class Beside:
    """A load measured in rounds, each round followed at once by the no-op server's."""

    rounds: tuple[tuple[Measured, Measured], ...]

    @property
    def ratios(self) -> list[float]:
        """Each round's server CPU per call over the no-op server's in the same round."""
        return [
            (load.cpu_ms_per_call or 0.0) / (floor.cpu_ms_per_call or float("inf"))
            for load, floor in self.rounds
        ]


@dataclass(frozen=True)
class Noop:
    """The no-op server, kept running so that budgeted figures are measured beside it."""

    call: Callable[[], Awaitable[object]]
    pid: int


async def beside_noop(
    call: Callable[[], Awaitable[object]],
    noop: Noop,
    *,
    concurrency: int,
    total: int,
    server_pid: int,
    rounds: int = ROUNDS,
) -> Beside:
    """`rounds` alternations of the load and the no-op load, each of `total` calls.

    The machine drifts over the minutes a scenario takes (on a shared 2-core machine the
    no-op server's own CPU per call moved 0.24-0.35 ms within a quarter of an hour), so a
    ratio is taken between loads seconds apart, and the median of the rounds reported.
    """
    measured = []
    for _ in range(rounds):
        load = await drive(call, concurrency=concurrency, total=total, server_pid=server_pid)
        floor = await drive(noop.call, concurrency=concurrency, total=total, server_pid=noop.pid)
        measured.append((load, floor))
    return Beside(tuple(measured))


def report_beside(name: str, beside: Beside) -> None:
    """Each round's server CPU per call beside the no-op's, and the median ratio."""
    parts = [
        f"{load.cpu_ms_per_call or 0:.3f}/{floor.cpu_ms_per_call or 0:.3f} ms"
        for load, floor in beside.rounds
    ]
    ratios = beside.ratios
    print(
        f"{name} server CPU per call beside the no-op, {len(ratios)} rounds: "
        f"{', '.join(parts)}; ratios {', '.join(f'{r:.2f}' for r in ratios)}; "
        f"median {statistics.median(ratios):.2f}x"
    )
