"""GetDecisionStats: open counts, outcomes, times to decision and SLA breaches, from SQL."""

from __future__ import annotations

from datetime import timedelta

from hitl.v1 import decision_pb2

from hitl_grpc.domain.values import Role
from tests.decisions_support import submit
from tests.harness import Harness, ServerFactory


def _s(value: object) -> float:
    return value.ToTimedelta().total_seconds()  # type: ignore[attr-defined, no-any-return]


async def test_stats_count_the_queue_and_time_the_verdicts(make_server: ServerFactory) -> None:
    # The sweeper stays out of the way: this test decides when an SLA is breached.
    async with make_server(sweep_interval_s=3600) as server:
        await _stats_scenario(server)


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
    server.clock.advance(timedelta(hours=30))

    service = await server.as_role(Role.SERVICE)
    fast = await submit(server, service, priority=decision_pb2.PRIORITY_CRITICAL)
    slow = await submit(server, service, priority=decision_pb2.PRIORITY_CRITICAL)
    breached = await submit(server, service, priority=decision_pb2.PRIORITY_CRITICAL)
    await submit(server, service, priority=decision_pb2.PRIORITY_HIGH)
    claimed = await submit(server, service, priority=decision_pb2.PRIORITY_MEDIUM)
    escalated = await submit(server, service, priority=decision_pb2.PRIORITY_MEDIUM)

    server.clock.advance(timedelta(minutes=5))
    analyst = await server.as_role(Role.ANALYST)

    async def verdict(analysis_id: str, status: decision_pb2.DecisionStatus.ValueType) -> None:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(analysis_id=analysis_id, status=status),
            metadata=await server.as_role(Role.ANALYST),  # fresh: the clock jumps past tokens
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
    server.clock.advance(timedelta(minutes=8))
    await verdict(slow.analysis_id, decision_pb2.DECISION_STATUS_REJECTED)
    server.clock.advance(timedelta(minutes=7))  # 20 min after submission: past the 15 min SLA
    await verdict(breached.analysis_id, decision_pb2.DECISION_STATUS_APPROVED)

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
    # Verdicts after ~5, ~13 and ~20 minutes (the clock also flows a little between calls).
    assert abs(_s(day.p50_time_to_decision) - 13 * 60) < 30
    assert abs(_s(day.p90_time_to_decision) - 20 * 60) < 30
    assert abs(_s(day.avg_time_to_decision) - (5 + 13 + 20) * 60 / 3) < 30

    total = stats.all_time
    assert (total.submitted, total.rejected, total.decided) == (7, 2, 4)
    assert abs(_s(total.p50_time_to_decision) - 5 * 60) < 30  # ranks: ~0, 5, 13, 20 min


async def test_stats_of_an_empty_service_are_zero(server: Harness) -> None:
    stats = await server.decisions.GetDecisionStats(
        decision_pb2.GetDecisionStatsRequest(),
        metadata=await server.as_role(Role.SERVICE),
        timeout=10,
    )
    assert stats.pending == 0 and stats.all_time.decided == 0
    assert not stats.all_time.HasField("p50_time_to_decision")
