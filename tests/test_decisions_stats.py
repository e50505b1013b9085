"""GetDecisionStats: open counts, outcomes, times to decision and SLA breaches, from SQL."""

from __future__ import annotations

from datetime import timedelta

from hitl.v1 import decision_pb2
from sqlalchemy import update

from hitl_grpc.config import Settings
from hitl_grpc.domain.values import Priority, Role
from hitl_grpc.store.tables import decisions
from tests.decisions_support import database_now, submit, wait_for_database_time, when
from tests.harness import Harness, ServerFactory


def _s(value: object) -> float:
    return value.ToTimedelta().total_seconds()  # type: ignore[attr-defined, no-any-return]


async def test_stats_count_the_queue_and_time_the_verdicts(make_server: ServerFactory) -> None:
    # The sweeper stays out of the way: this test decides when an SLA is breached.
    sla = {**Settings().sla, Priority.CRITICAL: timedelta(seconds=2)}
    async with make_server(sweep_interval_s=3600, sla=sla) as server:
        await _stats_scenario(server)


async def _backdate(
    server: Harness, analysis_id: str, *, took: timedelta, ago: timedelta = timedelta(0)
) -> None:
    """Moves a verdict into the past: the real clock can't pass hours in a test."""
    decided_at = await database_now(server) - ago
    async with server.running.engine.begin() as conn:
        await conn.execute(
            update(decisions)
            .where(decisions.c.analysis_id == analysis_id)
            .values(created_at=decided_at - took, updated_at=decided_at, decided_at=decided_at)
        )


async def _stats_scenario(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    old = await submit(server, service, priority=decision_pb2.PRIORITY_LOW)
    admin = await server.as_role(Role.ADMIN)
    await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=old.analysis_id, status=decision_pb2.DECISION_STATUS_REJECTED
        ),
        metadata=admin,
        timeout=10,
    )
    fast = await submit(server, service, priority=decision_pb2.PRIORITY_HIGH)
    slow = await submit(server, service, priority=decision_pb2.PRIORITY_HIGH)
    breached = await submit(server, service, priority=decision_pb2.PRIORITY_CRITICAL)
    await submit(server, service, priority=decision_pb2.PRIORITY_HIGH)
    claimed = await submit(server, service, priority=decision_pb2.PRIORITY_MEDIUM)
    escalated = await submit(server, service, priority=decision_pb2.PRIORITY_MEDIUM)
    analyst = await server.as_role(Role.ANALYST)

    async def verdict(analysis_id: str, status: decision_pb2.DecisionStatus.ValueType) -> None:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(analysis_id=analysis_id, status=status),
            metadata=analyst,
            timeout=10,
        )

    await verdict(fast.analysis_id, decision_pb2.DECISION_STATUS_APPROVED)
    await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=claimed.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    await server.decisions.EscalateDecision(
        decision_pb2.EscalateDecisionRequest(analysis_id=escalated.analysis_id, reason="r"),
        metadata=analyst,
        timeout=10,
    )
    await verdict(slow.analysis_id, decision_pb2.DECISION_STATUS_REJECTED)
    # A verdict after the (2 s) SLA deadline, on the database's clock: one breach.
    await wait_for_database_time(server, when(breached.sla_deadline))
    await verdict(breached.analysis_id, decision_pb2.DECISION_STATUS_APPROVED)
    await _backdate(server, old.analysis_id, took=timedelta(0), ago=timedelta(hours=30))
    for made, minutes in ((fast, 5), (slow, 13), (breached, 20)):
        await _backdate(server, made.analysis_id, took=timedelta(minutes=minutes))

    stats = await server.decisions.GetDecisionStats(
        decision_pb2.GetDecisionStatsRequest(),
        metadata=await server.as_role(Role.VIEWER),
        timeout=10,
    )
    by_priority = {c.priority: c.count for c in stats.pending_by_priority}
    assert by_priority == {
        decision_pb2.PRIORITY_CRITICAL: 0,
        decision_pb2.PRIORITY_HIGH: 1,
        decision_pb2.PRIORITY_MEDIUM: 0,
        decision_pb2.PRIORITY_LOW: 0,
    }
    assert (stats.pending, stats.in_review, stats.escalated) == (1, 1, 1)

    day = stats.last_24h
    assert (day.submitted, day.approved, day.rejected, day.escalated, day.expired) == (
        6,
        2,
        1,
        1,
        0,
    )
    assert day.decided == 3
    assert day.sla_breaches == 1
    # Verdicts after 5, 13 and 20 minutes.
    assert abs(_s(day.p50_time_to_decision) - 13 * 60) < 1
    assert abs(_s(day.p90_time_to_decision) - 20 * 60) < 1
    assert abs(_s(day.avg_time_to_decision) - (5 + 13 + 20) * 60 / 3) < 1

    total = stats.all_time
    assert (total.submitted, total.rejected, total.decided) == (7, 2, 4)
    assert abs(_s(total.p50_time_to_decision) - 5 * 60) < 1  # ranks: 0, 5, 13, 20 min


async def test_stats_of_an_empty_service_are_zero(server: Harness) -> None:
    stats = await server.decisions.GetDecisionStats(
        decision_pb2.GetDecisionStatsRequest(),
        metadata=await server.as_role(Role.SERVICE),
        timeout=10,
    )
    assert stats.pending == 0 and stats.all_time.decided == 0
    assert not stats.all_time.HasField("p50_time_to_decision")
