"""Shared bench parts: a real server in a subprocess, the no-op ceiling, a load driver."""

from __future__ import annotations

import asyncio
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

import grpc

ADMIN_PASSWORD: Final = "bench-bootstrap-secret-0001"
PG_URL: Final = os.environ.get("HITL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/")
BENCH_SECRET: Final = "bench-signing-key-" + "k" * 32
NOOP_UNARY: Final = "/bench.Noop/Call"
NOOP_STREAM: Final = "/bench.Noop/Stream"


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


def _wait_for_line(proc: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    """The last word of the first stdout line holding `marker` (the bound address)."""
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not selector.select(timeout=deadline - time.monotonic()):
            continue
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited early with {proc.wait()}")
        if marker in line:
            return line.strip().rsplit(" ", 1)[-1]
    raise RuntimeError(f"server did not print {marker!r} within {timeout_s}s")


@contextmanager
def _process(args: list[str], env: dict[str, str], marker: str, cwd: str) -> Iterator[str]:
    log_path = os.path.join(cwd, "stderr.log")
    with open(log_path, "w") as errors:
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=errors, text=True
        )
        try:
            try:
                address = _wait_for_line(proc, marker, 60)
            except RuntimeError as exc:
                errors.flush()
                with open(log_path) as log:
                    raise RuntimeError(f"{exc}:\n{log.read()[-2000:]}") from None
            yield address
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def serve_subprocess(env: dict[str, str] | None = None) -> Iterator[str]:
    """`hitl-grpc serve` on 127.0.0.1:0 over a fresh SQLite file unless env says otherwise."""
    with tempfile.TemporaryDirectory(prefix="hitl-bench-") as tmp:
        full = {
            **os.environ,
            "HITL_LISTEN": "127.0.0.1:0",
            "HITL_METRICS_LISTEN": "off",
            "HITL_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            # One access-log line per RPC is real work; the bench measures the service path.
            "HITL_LOG_LEVEL": "WARNING",
            "HITL_DATABASE_URL": f"sqlite:///{tmp}/hitl.db",
            **(env or {}),
        }
        with _process(
            [sys.executable, "-m", "hitl_grpc.cli", "serve"], full, "serving on", tmp
        ) as addr:
            yield addr


@contextmanager
def fresh_postgres(name: str) -> Iterator[str]:
    """A new PostgreSQL database for one bench run, dropped afterwards."""
    import psycopg

    with psycopg.connect(PG_URL + "postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL + name
    finally:
        with psycopg.connect(PG_URL + "postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def noop_server() -> Iterator[str]:
    """The ceiling: a grpc.aio server in its own process whose methods do nothing."""
    with tempfile.TemporaryDirectory(prefix="hitl-noop-") as tmp:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": root}
        with _process([sys.executable, "-m", "bench.noop"], env, "serving on", tmp) as addr:
            yield addr


def noop_call(
    channel: grpc.aio.Channel, payload: bytes = b"x" * 64
) -> Callable[[], Awaitable[object]]:
    """A coroutine factory making one no-op unary call."""
    method = channel.unary_unary(NOOP_UNARY)

    async def call() -> object:
        return await method(payload, timeout=30)

    return call


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
