"""SubmitDecision and ListPendingDecisions beside the no-op ceiling, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
from hitl.v1 import auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from bench.load import Measured, drive, report_calls
from bench.noop import noop_call, noop_server
from bench.processes import (
    ADMIN_PASSWORD,
    BENCH_SECRET,
    Address,
    fresh_postgres,
    serve_subprocess,
)
from tests.samples import sample_request, ts

CONCURRENCY = 64
SUBMITS = 3000
LISTS = 3000
QUEUE_ROWS = 100_000

# The queue as the list query sees it: 100,000 rows, three in eight open.
_FILL_SELECT = """
SELECT 'bulk-' || n, 'inc', 'high', '10.0.0.1', '', 50, '[]', '[]', '[]', '',
       (n % 4) + 1, {now}, 'h', 'bench', (n % 8) + 1 - (CASE WHEN n % 8 >= 6 THEN 5 ELSE 0 END),
       1, {created}, {created}, {sla}, false
FROM {series}
"""
_COLUMNS = (
    "analysis_id, incident_id, threat_level, source_ip, attributed_actor, confidence, iocs, "
    "ttps, recommended_actions, forensic_summary, priority, detected_at, payload_hash, "
    "submitted_by, status, version, created_at, updated_at, sla_deadline, sla_breached"
)


def fill_sqlite(path: str, rows: int = QUEUE_ROWS, fill_select: str = _FILL_SELECT) -> None:
    """`rows` decisions written straight into a SQLite file, as `fill_select` makes them."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "WITH RECURSIVE s(n) AS "
            f"(SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {rows}) "
            f"INSERT INTO decisions ({_COLUMNS}) "
            + fill_select.format(
                now="strftime('%Y-%m-%d %H:%M:%f', 'now')",
                created="strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || n || ' seconds')",
                sla="strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 day')",
                series="s",
            )
        )
        conn.execute("ANALYZE")


def fill_postgres(url: str, rows: int = QUEUE_ROWS, fill_select: str = _FILL_SELECT) -> None:
    """`rows` decisions written straight into a PostgreSQL database, as `fill_select` makes them."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO decisions ({_COLUMNS}) "
            + fill_select.format(
                now="now()",
                created="now() - n * interval '1 second'",
                sla="now() + interval '1 day'",
                series=f"generate_series(1, {rows}) AS n",
            )
        )
        conn.execute("VACUUM ANALYZE decisions")


async def _admin_metadata(channel: grpc.aio.Channel) -> tuple[tuple[str, str], ...]:
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    login = await auth.Login(
        auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=30
    )
    return (("authorization", f"Bearer {login.tokens.access_token}"),)


def _submitter(
    stub: decision_pb2_grpc.DecisionServiceAsyncStub, meta: tuple[tuple[str, str], ...]
) -> Callable[[], Awaitable[object]]:
    counter = itertools.count()
    run = f"{time.time_ns():x}"
    detected = ts(datetime.now(UTC) - timedelta(minutes=1))

    async def call() -> object:
        request = sample_request(
            f"bench-{run}-{next(counter)}",
            attributed_actor="APT-Bench",
            forensic_summary="bench",
            priority=decision_pb2.PRIORITY_MEDIUM,
            detected_at=detected,
        )
        return await stub.SubmitDecision(request, metadata=meta, timeout=30)

    return call


async def _measure(addr: Address, *, fill: Callable[[], None]) -> tuple[Measured, Measured]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        meta = await _admin_metadata(channel)
        submit = _submitter(stub, meta)
        await drive(submit, concurrency=CONCURRENCY, total=200)
        submits = await drive(submit, concurrency=CONCURRENCY, total=SUBMITS, server_pid=addr.pid)
        fill()

        async def page() -> object:
            return await stub.ListPendingDecisions(
                decision_pb2.ListPendingDecisionsRequest(page_size=50), metadata=meta, timeout=30
            )

        await drive(page, concurrency=CONCURRENCY, total=200)
        lists = await drive(page, concurrency=CONCURRENCY, total=LISTS, server_pid=addr.pid)
    return submits, lists


def _print(backend: str, submits: Measured, lists: Measured, ceiling: Measured) -> None:
    report_calls(f"SubmitDecision {backend}", submits, ceiling)
    report_calls(f"ListPending p50 {backend} {QUEUE_ROWS} rows", lists, ceiling)


async def run() -> None:
    """Submit throughput and queue pages on both backends, each beside the no-op server."""
    with noop_server() as noop_addr:
        async with grpc.aio.insecure_channel(noop_addr) as channel:
            await drive(noop_call(channel), concurrency=CONCURRENCY, total=500)
            ceiling = await drive(
                noop_call(channel), concurrency=CONCURRENCY, total=6000, server_pid=noop_addr.pid
            )
    print(f"no-op at {CONCURRENCY} callers: {ceiling.calls_per_s:.0f} calls/s")

    with tempfile.TemporaryDirectory(prefix="hitl-bench-decisions-") as tmp:
        path = f"{tmp}/hitl.db"
        env = {"HITL_DATABASE_URL": f"sqlite:///{path}"}
        with serve_subprocess(env) as addr:
            submits, lists = await _measure(addr, fill=lambda: fill_sqlite(path))
        _print("sqlite", submits, lists, ceiling)

    with fresh_postgres("hitl_bench_decisions") as url:
        env = {"HITL_DATABASE_URL": url, "HITL_JWT_SECRET": BENCH_SECRET}
        with serve_subprocess(env) as addr:
            submits, lists = await _measure(addr, fill=lambda: fill_postgres(url))
        _print("postgres", submits, lists, ceiling)
