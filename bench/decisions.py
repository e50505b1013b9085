"""SubmitDecision, MakeDecision and ListPendingDecisions beside the no-op ceiling, on SQLite
and PostgreSQL, each with group commit as configured by default and switched the other way."""

from __future__ import annotations

import functools
import itertools
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
from hitl.v1 import auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from bench.load import Beside, Measured, Noop, beside_noop, drive, report_beside, report_calls
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
VERDICTS = 1500
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


def _counted(
    call: Callable[[], Awaitable[object]], unavailable: Counter[str]
) -> Callable[[], Awaitable[object]]:
    """The call, with each UNAVAILABLE counted by its message."""

    async def counted() -> object:
        try:
            return await call()
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.UNAVAILABLE:
                unavailable[err.details() or ""] += 1
            raise

    return counted


@dataclass(frozen=True)
class Writes:
    """The write loads of one server: submits, then verdicts on what was submitted."""

    submits: Measured
    submits_unavailable: Counter[str]
    verdicts: Measured
    verdicts_unavailable: Counter[str]
    # Submits in rounds beside the no-op server, where one was given.
    submits_beside: Beside | None


async def _measure_writes(
    stub: decision_pb2_grpc.DecisionServiceAsyncStub,
    meta: tuple[tuple[str, str], ...],
    pid: int,
    noop: Noop | None,
) -> Writes:
    submit = _submitter(stub, meta)
    await drive(submit, concurrency=CONCURRENCY, total=200)
    submitted_unavailable: Counter[str] = Counter()
    submits = await drive(
        _counted(submit, submitted_unavailable),
        concurrency=CONCURRENCY,
        total=SUBMITS,
        server_pid=pid,
    )
    beside = None
    if noop is not None:
        beside = await beside_noop(
            submit, noop, concurrency=CONCURRENCY, total=SUBMITS, server_pid=pid
        )

    ids: list[str] = []

    async def submit_one() -> object:
        reply = await submit()
        assert isinstance(reply, decision_pb2.SubmitDecisionResponse)
        ids.append(reply.decision.analysis_id)
        return reply

    # A submit refused (UNAVAILABLE) leaves nothing to decide: submit until there is enough.
    while len(ids) < VERDICTS + 200:
        await drive(submit_one, concurrency=CONCURRENCY, total=VERDICTS + 200 - len(ids))
    pending = iter(ids)

    async def reject() -> object:
        request = decision_pb2.MakeDecisionRequest(
            analysis_id=next(pending), status=decision_pb2.DECISION_STATUS_REJECTED, notes="bench"
        )
        return await stub.MakeDecision(request, metadata=meta, timeout=30)

    await drive(reject, concurrency=CONCURRENCY, total=200)
    decided_unavailable: Counter[str] = Counter()
    verdicts = await drive(
        _counted(reject, decided_unavailable),
        concurrency=CONCURRENCY,
        total=VERDICTS,
        server_pid=pid,
    )
    return Writes(submits, submitted_unavailable, verdicts, decided_unavailable, beside)


async def _measure(
    addr: Address, *, fill: Callable[[], None] | None, noop: Noop | None = None
) -> tuple[Writes, Measured, Beside | None]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        meta = await _admin_metadata(channel)
        writes = await _measure_writes(stub, meta, addr.pid, noop)
        if fill is None:
            return writes, writes.submits, None
        fill()

        async def page() -> object:
            return await stub.ListPendingDecisions(
                decision_pb2.ListPendingDecisionsRequest(page_size=50), metadata=meta, timeout=30
            )

        await drive(page, concurrency=CONCURRENCY, total=200)
        lists = await drive(page, concurrency=CONCURRENCY, total=LISTS, server_pid=addr.pid)
        beside = None
        if noop is not None:
            beside = await beside_noop(
                page, noop, concurrency=CONCURRENCY, total=LISTS, server_pid=addr.pid
            )
    return writes, lists, beside


def _print_writes(label: str, writes: Writes, ceiling: Measured) -> None:
    report_calls(f"SubmitDecision {label}", writes.submits, ceiling)
    _print_unavailable(writes.submits_unavailable, SUBMITS)
    if writes.submits_beside is not None:
        report_beside(f"SubmitDecision {label}", writes.submits_beside)
    report_calls(f"MakeDecision {label}", writes.verdicts, ceiling)
    _print_unavailable(writes.verdicts_unavailable, VERDICTS)


def _print_unavailable(unavailable: Counter[str], total: int) -> None:
    why = "; ".join(f"{count} {message!r}" for message, count in unavailable.most_common())
    print(
        f"  UNAVAILABLE {unavailable.total()} of {total} at {CONCURRENCY} callers"
        + (f": {why}" if why else "")
    )


async def run() -> None:
    """Submit throughput and queue pages on both backends, each beside the no-op server;
    on PostgreSQL, whose figures are budgeted, also in rounds right beside it."""
    with noop_server() as noop_addr:
        async with grpc.aio.insecure_channel(noop_addr) as noop_channel:
            await drive(noop_call(noop_channel), concurrency=CONCURRENCY, total=500)
            ceiling = await drive(
                noop_call(noop_channel),
                concurrency=CONCURRENCY,
                total=6000,
                server_pid=noop_addr.pid,
            )
            print(f"no-op at {CONCURRENCY} callers: {ceiling.calls_per_s:.0f} calls/s")
            await _run_scenarios(ceiling, Noop(noop_call(noop_channel), noop_addr.pid))


async def _run_scenarios(ceiling: Measured, noop: Noop) -> None:
    # Group commit as `auto` sets it (on for SQLite, off for PostgreSQL), then the other way.
    for group_commit, fill_queue in (("on", True), ("off", False)):
        with tempfile.TemporaryDirectory(prefix="hitl-bench-decisions-") as tmp:
            path = f"{tmp}/hitl.db"
            env = {"HITL_DATABASE_URL": f"sqlite:///{path}", "HITL_GROUP_COMMIT": group_commit}
            with serve_subprocess(env) as addr:
                writes, lists, _ = await _measure(
                    addr, fill=functools.partial(fill_sqlite, path) if fill_queue else None
                )
            _print_writes(f"sqlite group commit {group_commit}", writes, ceiling)
            if fill_queue:
                report_calls(f"ListPending p50 sqlite {QUEUE_ROWS} rows", lists, ceiling)

    for group_commit, fill_queue in (("off", True), ("on", False)):
        with fresh_postgres(f"hitl_bench_decisions_{group_commit}") as url:
            env = {
                "HITL_DATABASE_URL": url,
                "HITL_JWT_SECRET": BENCH_SECRET,
                "HITL_GROUP_COMMIT": group_commit,
            }
            with serve_subprocess(env) as addr:
                writes, lists, pages_beside = await _measure(
                    addr,
                    fill=functools.partial(fill_postgres, url) if fill_queue else None,
                    noop=noop,
                )
            _print_writes(f"postgres group commit {group_commit}", writes, ceiling)
            if fill_queue:
                name = f"ListPending p50 postgres {QUEUE_ROWS} rows"
                report_calls(name, lists, ceiling)
                if pages_beside is not None:
                    report_beside(name, pages_beside)
