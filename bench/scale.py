"""Submit and ListPending on a nearly empty table, then with 1,000,000 decisions in it.

On each backend one server measures both loads, fills the table behind its back with
a million decisions (seven in eight resolved, the open rest LOW, so the measured page
holds the same decisions before and after), and measures them again. The figure is
full against empty, in calls/s and in the server's CPU per call.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import grpc
from hitl.v1 import decision_pb2, decision_pb2_grpc

from bench.decisions import CONCURRENCY, _admin_metadata, _submitter, fill_postgres, fill_sqlite
from bench.load import Measured, drive
from bench.processes import BENCH_SECRET, Address, fresh_postgres, serve_subprocess

ROWS = 1_000_000
SUBMITS = 2000
LISTS = 2000

# Seven in eight resolved (APPROVED or REJECTED), the rest PENDING at LOW priority: open
# rows queue behind the MEDIUM ones the bench submits, as history and a backlog would.
_FILL_SELECT = """
SELECT 'scale-' || n, 'inc', 'high', '10.0.0.1', '', 50, '[]', '[]', '[]', '',
       4, {now}, 'h', 'bench', CASE WHEN n % 8 = 0 THEN 1 ELSE 3 + n % 2 END,
       1, {created}, {created}, {sla}, false
FROM {series}
"""


async def _both(addr: Address, channel: grpc.aio.Channel) -> tuple[Measured, Measured]:
    stub = decision_pb2_grpc.DecisionServiceStub(channel)
    meta = await _admin_metadata(channel)
    submit = _submitter(stub, meta)

    async def page() -> object:
        request = decision_pb2.ListPendingDecisionsRequest(page_size=50)
        return await stub.ListPendingDecisions(request, metadata=meta, timeout=30)

    await drive(submit, concurrency=CONCURRENCY, total=200)
    submits = await drive(submit, concurrency=CONCURRENCY, total=SUBMITS, server_pid=addr.pid)
    await drive(page, concurrency=CONCURRENCY, total=200)
    lists = await drive(page, concurrency=CONCURRENCY, total=LISTS, server_pid=addr.pid)
    return submits, lists


def _line(name: str, empty: Measured, full: Measured) -> None:
    rate = full.calls_per_s / empty.calls_per_s if empty.calls_per_s else float("nan")
    cpu_empty, cpu_full = empty.cpu_ms_per_call, full.cpu_ms_per_call
    cpu = cpu_full / cpu_empty if cpu_full and cpu_empty else float("nan")
    print(
        f"{name:<36} empty {empty.calls_per_s:8.1f} calls/s {cpu_empty or 0:.3f} ms CPU"
        f" | {ROWS:,} rows {full.calls_per_s:8.1f} calls/s {cpu_full or 0:.3f} ms CPU"
        f" | calls/s {rate:.2f}x, CPU {cpu:.2f}x (budget: within 20 %),"
        f" errors {empty.errors + full.errors}"
    )


async def _measure(backend: str, env: dict[str, str], fill: Callable[[], None]) -> None:
    with serve_subprocess(env) as addr:
        async with grpc.aio.insecure_channel(addr) as channel:
            empty = await _both(addr, channel)
            fill()
            full = await _both(addr, channel)
    _line(f"SubmitDecision {backend}", empty[0], full[0])
    _line(f"ListPending page 50 {backend}", empty[1], full[1])


async def run() -> None:
    """Both calls on both backends, on an empty table and on a million rows."""
    with tempfile.TemporaryDirectory(prefix="hitl-bench-scale-") as tmp:
        path = f"{tmp}/hitl.db"
        env = {"HITL_DATABASE_URL": f"sqlite:///{path}"}
        await _measure("sqlite", env, lambda: fill_sqlite(path, ROWS, _FILL_SELECT))
    with fresh_postgres("hitl_bench_scale") as url:
        env = {"HITL_DATABASE_URL": url, "HITL_JWT_SECRET": BENCH_SECRET}
        await _measure("postgres", env, lambda: fill_postgres(url, ROWS, _FILL_SELECT))
