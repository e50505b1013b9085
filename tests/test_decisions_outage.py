"""Database trouble: UNAVAILABLE within the deadline, health follows, nothing half-written."""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2
from hitl.v1 import decision_pb2
from psycopg import sql

from hitl_grpc.domain.values import Role
from tests.conftest import PG_ADMIN_URL
from tests.decisions_support import sample_request, scalar, submit, wait_until
from tests.harness import Harness, ServerFactory

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


def _db_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def _admin() -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)


async def _health(server: Harness) -> int:
    try:
        reply = await server.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    except grpc.aio.AioRpcError:
        return -1
    return int(reply.status)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_database_down_is_unavailable_fast_and_health_follows(
    make_server: ServerFactory, database_url: str
) -> None:
    name = _db_name(database_url)
    async with make_server(db_check_interval_s=0.05, db_timeout_s=2.0) as server:
        service = await server.as_role(Role.SERVICE)
        assert await _health(server) == SERVING
        async with await _admin() as admin:
            # The database refuses new sessions and loses the open ones: "down".
            await admin.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
            )
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            try:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await server.decisions.SubmitDecision(
                        sample_request(), metadata=service, timeout=5
                    )
                assert err.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "SELECT" not in (err.value.details() or "")

                async def not_serving() -> bool:
                    return await _health(server) == NOT_SERVING

                await wait_until(not_serving)
            finally:
                await admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name))
                )

        async def serving() -> bool:
            return await _health(server) == SERVING

        await wait_until(serving)
        decision = await submit(server, service)
        assert decision.version == 1


async def test_write_lock_held_too_long_is_unavailable_not_a_hang(
    backend: str, make_server: ServerFactory, database_url: str
) -> None:
    async with make_server(db_timeout_s=1.0) as server:
        service = await server.as_role(Role.SERVICE)
        decision = await submit(server, service)
        if backend == "sqlite":
            path = database_url.split(":///", 1)[1]
            # The server may be mid-write (a sweep, a group commit): wait for it as a client
            # would, on a thread of its own. Waiting on this thread would stall the server's
            # loop, which that write needs to reach its COMMIT: both would wait out the timeout.
            holder = sqlite3.connect(
                path, isolation_level=None, timeout=30, check_same_thread=False
            )
            await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
            release = holder.rollback
        else:
            conn = await psycopg.AsyncConnection.connect(database_url, connect_timeout=5)
            await conn.execute(
                "SELECT 1 FROM decisions WHERE analysis_id = %s FOR UPDATE",
                (decision.analysis_id,),
            )
            release = None
        try:
            analyst = await server.as_role(Role.ANALYST) if backend == "postgres" else None
            if analyst is None:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await server.decisions.SubmitDecision(
                        sample_request(), metadata=service, timeout=5
                    )
            else:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await server.decisions.ClaimDecision(
                        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
                        metadata=analyst,
                        timeout=5,
                    )
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        finally:
            if release is not None:
                release()
                holder.close()
            else:
                await conn.rollback()
                await conn.close()
        # Service resumes as soon as the lock is gone.
        again = await submit(server, service)
        assert again.version == 1


@pytest.mark.parametrize("backend", ["postgres"])
async def test_backend_killed_mid_transaction_leaves_nothing_half_written(
    server: Harness,
) -> None:
    service = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    decision = await submit(server, service)
    conninfo = server.running.settings.database_url
    async with await psycopg.AsyncConnection.connect(conninfo, connect_timeout=5) as blocker:
        # The claim's UPDATE and outbox row go through; its audit row then waits on this lock.
        await blocker.execute("LOCK TABLE audit_events IN EXCLUSIVE MODE")

        async def claim_it() -> decision_pb2.ClaimDecisionResponse:
            return await server.decisions.ClaimDecision(
                decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
                metadata=analyst,
                timeout=10,
            )

        claim = asyncio.create_task(claim_it())
        async with await _admin() as admin:

            async def waiting_pid() -> int | None:
                cur = await admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO audit_events%%'",
                    (_db_name(conninfo),),
                )
                row = await cur.fetchone()
                return int(str(row[0])) if row else None

            async def stuck() -> bool:
                return await waiting_pid() is not None

            await wait_until(stuck)
            # Mid-request: the transaction holds the new status and event, not yet committed.
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as peek:
                cur = await peek.execute(
                    "SELECT count(*) FROM decision_events WHERE analysis_id = %s",
                    (decision.analysis_id,),
                )
                assert await cur.fetchone() == (1,)
            pid = await waiting_pid()
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await claim
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        await blocker.rollback()

    stored = await server.decisions.GetDecision(
        decision_pb2.GetDecisionRequest(analysis_id=decision.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    assert (stored.decision.status, stored.decision.version) == (
        decision_pb2.DECISION_STATUS_PENDING,
        1,
    )
    assert (
        await scalar(
            server,
            "SELECT count(*) FROM decision_events WHERE analysis_id = :id",
            id=decision.analysis_id,
        )
        == 1
    )
    assert (
        await scalar(
            server, "SELECT count(*) FROM audit_events WHERE target = :id", id=decision.analysis_id
        )
        == 1
    )
    # The pool threw the dead connection away: the same claim now succeeds.
    claimed = await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    assert claimed.decision.version == 2
