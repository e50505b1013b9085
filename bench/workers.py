"""HITL_WORKERS: calls/s of GetCurrentUser and SubmitDecision (PostgreSQL) against the
number of serving processes, beside the no-op server under the same load.

One client process cannot load several workers (it is one event loop itself), so the load
comes from CLIENTS processes, each with connections of its own: the kernel spreads
connections over the workers, never the calls of one connection. Server CPU is summed over
the supervisor and every worker.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Final

import grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from bench.load import Measured, cpu_seconds, report, report_calls
from bench.noop import NOOP_UNARY, noop_server
from bench.processes import ADMIN_PASSWORD, BENCH_SECRET, Address, fresh_postgres, serve_subprocess
from hitl_grpc.config import WAKE_LINGER_S
from tests.samples import sample_request, ts

WORKER_COUNTS: Final = (1, 2)
CLIENTS: Final = 4
CHANNELS_PER_CLIENT: Final = 4
# Concurrent callers over all clients, as in bench/decisions.py.
CONCURRENCY: Final = 64
WARMUP_S: Final = 2.0
DURATION_S: Final = 8.0
# Time for the client processes to start (spawned: they import grpc afresh).
SPAWN_S: Final = 4.0
GET_CURRENT_USER: Final = "/hitl.v1.AuthService/GetCurrentUser"
SUBMIT_DECISION: Final = "/hitl.v1.DecisionService/SubmitDecision"


def _request_maker(method: str, client: int) -> Callable[[], bytes]:
    if method == GET_CURRENT_USER:
        payload = auth_pb2.GetCurrentUserRequest().SerializeToString()
        return lambda: payload
    if method == SUBMIT_DECISION:
        counter = itertools.count()
        run = f"{time.time_ns():x}-{client}"
        detected = ts(datetime.now(UTC) - timedelta(minutes=1))
        return lambda: sample_request(
            f"bench-w-{run}-{next(counter)}",
            attributed_actor="APT-Bench",
            forensic_summary="bench",
            detected_at=detected,
        ).SerializeToString()
    return lambda: b"x" * 64


async def _load(
    address: str, method: str, token: str, client: int, start_at: float, end_at: float
) -> tuple[list[float], int]:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    make = _request_maker(method, client)
    latencies: list[float] = []
    errors = 0
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS_PER_CLIENT)
    ]
    calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
        channel.unary_unary(method) for channel in channels
    ]

    async def caller(n: int) -> None:
        nonlocal errors
        call = calls[n % len(calls)]
        while (now := time.time()) < end_at:
            started = time.perf_counter()
            try:
                await call(make(), metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError:
                if now >= start_at:
                    errors += 1
                continue
            if now >= start_at and time.time() < end_at:
                latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(caller(n) for n in range(CONCURRENCY // CLIENTS)))
    finally:
        for channel in channels:
            await channel.close()
    return latencies, errors


def _client(
    address: str, method: str, token: str, client: int, start_at: float, end_at: float
) -> tuple[list[float], int]:
    """One client process's calls that completed between `start_at` and `end_at`."""
    return asyncio.run(_load(address, method, token, client, start_at, end_at))


def _server_pids(address: Address) -> list[int]:
    """The server process and its children (a supervisor's workers)."""
    pid = address.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children)]


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


async def _sleep_until(when: float) -> None:
    await asyncio.sleep(max(when - time.time(), 0))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _counters(metrics_port: int) -> tuple[float, float]:
    """(event log reads, SubmitDecision calls answered OK) over all workers."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as reply:
        text = reply.read().decode()
    reads = submits = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hitl_event_reads_total":
                reads += sample.value
            elif (
                sample.name == "hitl_rpc_total"
                and sample.labels.get("method") == SUBMIT_DECISION
                and sample.labels.get("code") == "OK"
            ):
                submits += sample.value
    return reads, submits


async def _measure(address: Address, method: str, token: str = "") -> Measured:
    pids = _server_pids(address)
    begin = time.time() + SPAWN_S
    start_at, end_at = begin + WARMUP_S, begin + WARMUP_S + DURATION_S
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(CLIENTS, mp_context=get_context("spawn")) as pool:
        futures = [
            loop.run_in_executor(pool, _client, address, method, token, n, start_at, end_at)
            for n in range(CLIENTS)
        ]
        await _sleep_until(start_at)
        cpu_before = _cpu(pids)
        await _sleep_until(end_at)
        cpu = _cpu(pids) - cpu_before
        results = await asyncio.gather(*futures)
    latencies = sorted(lat for lats, _ in results for lat in lats)
    return Measured(
        calls=len(latencies),
        errors=sum(errors for _, errors in results),
        seconds=DURATION_S,
        p50_ms=statistics.median(latencies) * 1000 if latencies else 0.0,
        p99_ms=latencies[int(len(latencies) * 0.99) - 1] * 1000 if latencies else 0.0,
        server_cpu_s=cpu,
    )


async def _admin_token(address: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        login = await auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=30
        )
    return login.tokens.access_token


async def run() -> None:
    """GetCurrentUser and SubmitDecision with 1 and 2 workers, beside the no-op server."""
    with noop_server() as noop_addr:
        ceiling = await _measure(noop_addr, NOOP_UNARY)
    print(
        f"no-op at {CONCURRENCY} callers from {CLIENTS} processes: "
        f"{ceiling.calls_per_s:.0f} calls/s"
    )
    figures: dict[tuple[str, int], Measured] = {}
    for workers in WORKER_COUNTS:
        with _served(workers) as (address, _):
            token = await _admin_token(address)
            for name, method in (
                ("GetCurrentUser", GET_CURRENT_USER),
                ("SubmitDecision", SUBMIT_DECISION),
            ):
                measured = await _measure(address, method, token)
                figures[name, workers] = measured
                report_calls(f"{name} postgres workers={workers}", measured, ceiling)
    for name in ("GetCurrentUser", "SubmitDecision"):
        one, most = figures[name, WORKER_COUNTS[0]], figures[name, WORKER_COUNTS[-1]]
        report(
            f"{name} workers={WORKER_COUNTS[-1]} vs {WORKER_COUNTS[0]}",
            most.calls_per_s,
            one.calls_per_s,
            "calls/s",
        )
    # What the linger saves: the readers' reads of the log per submit, over all workers.
    workers = WORKER_COUNTS[-1]
    for linger in ("0", ""):
        with _served(workers, HITL_WAKE_LINGER_S=linger) as (address, metrics_port):
            token = await _admin_token(address)
            reads_before, submits_before = _counters(metrics_port)
            measured = await _measure(address, SUBMIT_DECISION, token)
            reads, submits = _counters(metrics_port)
        per_submit = (reads - reads_before) / max(submits - submits_before, 1)
        shown = (
            f"{float(linger) * 1000:g} ms" if linger else f"{WAKE_LINGER_S * 1000:g} ms (default)"
        )
        print(
            f"workers={workers} linger {shown}: {measured.calls_per_s:.0f} submits/s, "
            f"{per_submit:.2f} event log reads per submit over all workers"
        )


@contextmanager
def _served(workers: int, **env: str) -> Iterator[tuple[Address, int]]:
    """`hitl-grpc serve` with this many workers on a fresh PostgreSQL database, its
    metrics on a port of their own."""
    metrics_port = _free_port()
    with fresh_postgres(f"hitl_bench_workers_{workers}") as url:
        full = {
            "HITL_DATABASE_URL": url,
            "HITL_JWT_SECRET": BENCH_SECRET,
            "HITL_WORKERS": str(workers),
            "HITL_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            **env,
        }
        with serve_subprocess(full) as address:
            yield address, metrics_port
