"""The sweeper: SLA escalation, expiry and lapsed leases, exactly once across replicas.

Time passes for real here: SLAs, leases and expiries are seconds long, and each test
waits (with a deadline) for the database's clock to pass them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from hitl.v1 import decision_pb2
from sqlalchemy import text

from hitl_grpc.config import Settings
from hitl_grpc.domain.decisions import SWEEP_BATCH, SweepReport
from hitl_grpc.domain.values import Priority, Role
from hitl_grpc.runtime.sweeper import Sweeper
from tests.decisions_support import (
    database_now,
    scalar,
    statuses,
    submit,
    ts,
    wait_for_database_time,
    wait_until,
    when,
)
from tests.harness import Harness, ServerFactory

SHORT = timedelta(seconds=3)
SLA = {**Settings().sla, Priority.CRITICAL: SHORT}


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[Harness]:
    """A server whose background sweeper waits: these tests sweep by hand and count."""
    async with make_server(sweep_interval_s=3600, sla=SLA, claim_lease=SHORT) as harness:
        yield harness


def sweeper_of(server: Harness) -> Sweeper:
    """The server's background sweeper."""
    return server.running.sweeper


async def _get(server: Harness, analysis_id: str) -> decision_pb2.Decision:
    admin = await server.as_role(Role.ADMIN)
    return (
        await server.decisions.GetDecision(
            decision_pb2.GetDecisionRequest(analysis_id=analysis_id), metadata=admin, timeout=10
        )
    ).decision


async def test_overdue_items_are_escalated_once(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    critical = await submit(server, service, priority=decision_pb2.PRIORITY_CRITICAL)
    low = await submit(server, service, priority=decision_pb2.PRIORITY_LOW)
    first = await sweeper_of(server).sweep_once()
    # Not escalated before its deadline (unless the machine was slower than the SLA).
    assert first.escalated == 0 or when(critical.sla_deadline) <= await database_now(server)
    await wait_for_database_time(server, when(critical.sla_deadline))
    second = await sweeper_of(server).sweep_once()
    assert first.escalated + second.escalated == 1
    assert await sweeper_of(server).sweep_once() == SweepReport()
    escalated = await _get(server, critical.analysis_id)
    assert escalated.status == decision_pb2.DECISION_STATUS_ESCALATED
    assert escalated.resolution.escalation_reason
    assert escalated.version == 2
    assert when(escalated.resolution.decided_at) >= when(critical.sla_deadline)
    assert (await _get(server, low.analysis_id)).status == decision_pb2.DECISION_STATUS_PENDING
    assert await scalar(server, "SELECT count(*) FROM decisions WHERE sla_breached = true") == 1
    assert (
        await scalar(
            server, "SELECT count(*) FROM audit_events WHERE kind = 'decision.sla_escalate'"
        )
        == 1
    )


async def test_items_past_expires_at_expire_and_refuse_verdicts(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    expiring = await submit(
        server,
        service,
        priority=decision_pb2.PRIORITY_LOW,
        expires_at=ts(await database_now(server) + SHORT),
    )
    analyst = await server.as_role(Role.ANALYST)
    await wait_for_database_time(server, when(expiring.expires_at))
    # Past expires_at but not yet swept: already closed to verdicts.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=expiring.analysis_id, status=decision_pb2.DECISION_STATUS_REJECTED
            ),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert await sweeper_of(server).sweep_once() == SweepReport(expired=1)
    stored = await _get(server, expiring.analysis_id)
    assert stored.status == decision_pb2.DECISION_STATUS_EXPIRED
    assert stored.resolution.status == decision_pb2.DECISION_STATUS_EXPIRED
    assert when(stored.resolution.decided_at) >= when(expiring.expires_at)
    kinds = await scalar(
        server,
        "SELECT count(*) FROM decision_events WHERE analysis_id = :id AND kind = 'removed'",
        id=expiring.analysis_id,
    )
    assert kinds == 1


async def test_lapsed_lease_returns_the_item_to_pending(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    decision = await submit(server, service, priority=decision_pb2.PRIORITY_LOW)
    claimed = await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    first = await sweeper_of(server).sweep_once()
    lapsed_at = when(claimed.decision.claim_expires_at)
    assert first.released == 0 or lapsed_at <= await database_now(server)
    await wait_for_database_time(server, lapsed_at)
    second = await sweeper_of(server).sweep_once()
    assert first.released + second.released == 1
    stored = await _get(server, decision.analysis_id)
    assert stored.status == decision_pb2.DECISION_STATUS_PENDING
    assert not stored.claimed_by


async def test_the_background_task_sweeps_on_its_own(make_server: ServerFactory) -> None:
    async with make_server(sweep_interval_s=0.05, sla=SLA) as server:
        service = await server.as_role(Role.SERVICE)
        decision = await submit(server, service, priority=decision_pb2.PRIORITY_CRITICAL)

        async def escalated() -> bool:
            stored = await _get(server, decision.analysis_id)
            return stored.status == decision_pb2.DECISION_STATUS_ESCALATED

        await wait_until(escalated, timeout_s=20)


async def _submit_many(
    server: Harness, count: int, *, expires_in: timedelta | None = None, **fields: Any
) -> list[str]:
    service = await server.as_role(Role.SERVICE)
    gate = asyncio.Semaphore(16)

    async def one() -> str:
        async with gate:
            if expires_in is not None:
                # Taken per item: however slow the machine, each one is valid when sent.
                fields["expires_at"] = ts(await database_now(server) + expires_in)
            return (await submit(server, service, **fields)).analysis_id

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _audited_once(server: Harness, kind: str, ids: list[str]) -> None:
    async with server.running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT target, count(*) FROM audit_events WHERE kind = :k GROUP BY target"),
                {"k": kind},
            )
        ).all()
    assert {target: n for target, n in rows} == dict.fromkeys(ids, 1)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_replicas_sweep_each_item_exactly_once(make_server: ServerFactory) -> None:
    count = 4 * SWEEP_BATCH
    settings = {"sweep_interval_s": 3600, "sla": {**SLA, Priority.CRITICAL: timedelta(seconds=1)}}
    async with make_server(**settings) as one, make_server(**settings) as two:
        expiring = await _submit_many(
            two, count, priority=decision_pb2.PRIORITY_LOW, expires_in=timedelta(seconds=3)
        )
        overdue = await _submit_many(one, count, priority=decision_pb2.PRIORITY_CRITICAL)
        await wait_for_database_time(
            one,
            await scalar(
                one,
                "SELECT greatest(max(expires_at), max(sla_deadline) FILTER (WHERE priority = 1))"
                " FROM decisions",
            ),
        )
        # Both replicas sweep the same due rows at once; then nothing is left to do.
        reports = await asyncio.gather(sweeper_of(one).sweep_once(), sweeper_of(two).sweep_once())
        assert await sweeper_of(one).sweep_once() == SweepReport()
        assert await sweeper_of(two).sweep_once() == SweepReport()
        stored = await statuses(one, overdue + expiring)
        assert all(stored[i] == decision_pb2.DECISION_STATUS_ESCALATED for i in overdue)
        assert all(stored[i] == decision_pb2.DECISION_STATUS_EXPIRED for i in expiring)
        # Every change counted by exactly one sweep: none done twice, none lost.
        assert sum(r.escalated for r in reports) == count
        assert sum(r.expired for r in reports) == count
        await _audited_once(one, "decision.sla_escalate", overdue)
        await _audited_once(one, "decision.expire", expiring)
        assert (
            await scalar(
                one, "SELECT count(*) FROM decision_events WHERE kind IN ('updated', 'removed')"
            )
            == 2 * count
        )
        assert await scalar(one, "SELECT max(version) FROM decisions") == 2


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_sweep_skips_rows_another_replica_is_changing(make_server: ServerFactory) -> None:
    async with make_server(sweep_interval_s=3600, sla=SLA) as server:
        ids = sorted(await _submit_many(server, 20, priority=decision_pb2.PRIORITY_CRITICAL))
        latest = await scalar(server, "SELECT max(sla_deadline) FROM decisions")
        await wait_for_database_time(server, latest)
        held, free = ids[:10], ids[10:]
        # Another replica's sweep, caught between taking its rows and committing.
        async with server.running.engine.connect() as other:
            await other.execute(
                text("SELECT analysis_id FROM decisions WHERE analysis_id = ANY(:ids) FOR UPDATE"),
                {"ids": held},
            )
            # Never waits on the held rows: it ends long before the lock does.
            report = await sweeper_of(server).sweep_once()
            assert report == SweepReport(escalated=len(free))
            assert set((await statuses(server, held)).values()) == {
                decision_pb2.DECISION_STATUS_PENDING
            }
            await other.rollback()
        assert await sweeper_of(server).sweep_once() == SweepReport(escalated=len(held))
        assert set((await statuses(server, ids)).values()) == {
            decision_pb2.DECISION_STATUS_ESCALATED
        }
