"""The no-op ceiling alone, and an authenticated read on the real server beside it."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc

from bench.load import Beside, Measured, Noop, beside_noop, drive, report_beside, report_calls
from bench.noop import noop_call, noop_server
from bench.processes import (
    ADMIN_PASSWORD,
    BENCH_SECRET,
    Address,
    fresh_postgres,
    serve_subprocess,
)

CONCURRENCY = 64
CALLS = 6000


async def run() -> None:
    """Unary calls/s: no-op server vs Health.Check vs authenticated GetCurrentUser, with the
    access log off (WARNING) and on (INFO, the default: one line per call), on SQLite and
    on PostgreSQL; the budgeted figure (PostgreSQL, WARNING) also in rounds beside the no-op."""
    with noop_server() as noop_addr:
        async with grpc.aio.insecure_channel(noop_addr) as channel:
            noop = noop_call(channel)
            await drive(noop, concurrency=CONCURRENCY, total=500)
            ceiling = await drive(
                noop, concurrency=CONCURRENCY, total=CALLS, server_pid=noop_addr.pid
            )
            print(
                f"no-op at {CONCURRENCY} callers:"
                f" p50 {ceiling.p50_ms:.2f} ms p99 {ceiling.p99_ms:.2f} ms"
            )
            await _scenarios(ceiling, Noop(noop, noop_addr.pid))


async def _scenarios(ceiling: Measured, noop: Noop) -> None:
    for level, suffix in (("WARNING", ""), ("INFO", ", access log")):
        with serve_subprocess({"HITL_LOG_LEVEL": level}) as addr:
            checks, reads, _ = await _measure(addr)
        report_calls(f"Health.Check{suffix}", checks, ceiling)
        report_calls(f"GetCurrentUser (JWT + user read) sqlite{suffix}", reads, ceiling)
    with fresh_postgres("hitl_bench_ceiling") as url:
        for level, suffix in (("WARNING", ""), ("INFO", ", access log")):
            env = {"HITL_DATABASE_URL": url, "HITL_JWT_SECRET": BENCH_SECRET}
            budgeted = level == "WARNING"
            with serve_subprocess({**env, "HITL_LOG_LEVEL": level}) as addr:
                _, reads, beside = await _measure(addr, noop if budgeted else None)
            name = f"GetCurrentUser (JWT + user read) postgres{suffix}"
            report_calls(name, reads, ceiling)
            if beside is not None:
                report_beside(name, beside)


async def _measure(
    addr: Address, noop: Noop | None = None
) -> tuple[Measured, Measured, Beside | None]:
    """Health.Check, then GetCurrentUser as the admin, on one server; with `noop`,
    GetCurrentUser again in rounds beside it."""
    async with grpc.aio.insecure_channel(addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        login = await auth.Login(
            auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=30
        )
        meta = (("authorization", f"Bearer {login.tokens.access_token}"),)

        async def check() -> object:
            return await health.Check(health_pb2.HealthCheckRequest(), timeout=30)

        async def whoami() -> object:
            return await auth.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(), metadata=meta, timeout=30
            )

        await drive(check, concurrency=CONCURRENCY, total=500)
        pid = addr.pid
        checks = await drive(check, concurrency=CONCURRENCY, total=CALLS, server_pid=pid)
        await drive(whoami, concurrency=CONCURRENCY, total=300)
        reads = await drive(whoami, concurrency=CONCURRENCY, total=CALLS, server_pid=pid)
        beside = None
        if noop is not None:
            beside = await beside_noop(
                whoami, noop, concurrency=CONCURRENCY, total=CALLS // 2, server_pid=pid
            )
    return checks, reads, beside
