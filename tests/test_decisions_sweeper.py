"""The sweeper: SLA escalation, expiry and lapsed leases, exactly once across replicas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.domain.clock import ShiftedClock
from hitl_grpc.domain.decisions import SweepReport
from hitl_grpc.domain.values import Role
from hitl_grpc.sweeper import Sweeper
from tests.decisions_support import scalar, statuses, submit, ts, wait_until
from tests.harness import Harness, ServerFactory


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[Harness]:
    """A server whose background sweeper waits: these tests sweep by hand and count."""
    async with make_server(sweep_interval_s=3600) as harness:
        yield harness


def sweeper_of(server: Harness) -> Sweeper:
    """The server's background sweeper."""
    sweeper = server.running.extras["sweeper"]
    assert isinstance(sweeper, Sweeper)
    return sweeper


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
    server.clock.advance(timedelta(minutes=14))
    assert (await sweeper_of(server).sweep_once()).escalated == 0
    server.clock.advance(timedelta(minutes=2))
    assert await sweeper_of(server).sweep_once() == SweepReport(escalated=1)
    assert await sweeper_of(server).sweep_once() == SweepReport()
    escalated = await _get(server, critical.analysis_id)
    assert escalated.status == decision_pb2.DECISION_STATUS_ESCALATED
    assert escalated.resolution.escalation_reason
    assert escalated.version == 2
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
        expires_at=ts(server.clock.now() + timedelta(minutes=30)),
    )
    server.clock.advance(timedelta(minutes=31))
    analyst = await server.as_role(Role.ANALYST)  # signed in after the jump: tokens expire too
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
    await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    server.clock.advance(timedelta(minutes=10, seconds=1))
    assert await sweeper_of(server).sweep_once() == SweepReport(released=1)
    stored = await _get(server, decision.analysis_id)
    assert stored.status == decision_pb2.DECISION_STATUS_PENDING
    assert not stored.claimed_by


async def test_the_background_task_sweeps_on_its_own(make_server: ServerFactory) -> None:
    async with make_server(sweep_interval_s=0.05) as server:
        service = await server.as_role(Role.SERVICE)
        decision = await submit(server, service, priority=decision_pb2.PRIORITY_CRITICAL)
        server.clock.advance(timedelta(minutes=16))

        async def escalated() -> bool:
            stored = await _get(server, decision.analysis_id)
            return stored.status == decision_pb2.DECISION_STATUS_ESCALATED

        await wait_until(escalated)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_replicas_sweep_each_item_exactly_once(make_server: ServerFactory) -> None:
    clock = ShiftedClock()
    count = 40
    async with (
        make_server(clock=clock, sweep_interval_s=0.05) as one,
        make_server(clock=clock, sweep_interval_s=0.05) as two,
    ):
        service = await one.as_role(Role.SERVICE)
        ids = [
            (await submit(one, service, priority=decision_pb2.PRIORITY_CRITICAL)).analysis_id
            for _ in range(count)
        ]
        expiring = [
            (
                await submit(
                    two,
                    service,
                    priority=decision_pb2.PRIORITY_LOW,
                    expires_at=ts(clock.now() + timedelta(minutes=5)),
                )
            ).analysis_id
            for _ in range(count)
        ]
        clock.advance(timedelta(minutes=20))
        # Both background sweepers race, and explicit sweeps race with them.
        reports = await asyncio.gather(
            *(s.sweep_once() for _ in range(3) for s in (sweeper_of(one), sweeper_of(two)))
        )

        async def all_swept() -> bool:
            return set((await statuses(one, ids + expiring)).values()) == {5, 6}

        await wait_until(all_swept, timeout_s=20)
        # Both background loops sweep at least twice more once the work is done.
        async with asyncio.timeout(20):
            await sweeper_of(one).wait_for_sweeps(sweeper_of(one).sweeps + 2)
            await sweeper_of(two).wait_for_sweeps(sweeper_of(two).sweeps + 2)
        assert sum(r.escalated for r in reports) <= count
        stored = await statuses(one, ids + expiring)
        assert all(stored[i] == decision_pb2.DECISION_STATUS_ESCALATED for i in ids)
        assert all(stored[i] == decision_pb2.DECISION_STATUS_EXPIRED for i in expiring)
        assert (
            await scalar(
                one, "SELECT count(*) FROM audit_events WHERE kind = 'decision.sla_escalate'"
            )
            == count
        )
        assert (
            await scalar(one, "SELECT count(*) FROM audit_events WHERE kind = 'decision.expire'")
            == count
        )
        assert (
            await scalar(
                one, "SELECT count(*) FROM decision_events WHERE kind IN ('updated', 'removed')"
            )
            == 2 * count
        )
        assert await scalar(one, "SELECT max(version) FROM decisions") == 2
