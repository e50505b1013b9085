"""Claim, release, make and escalate: one winner per race, terminal states stay terminal."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import grpc
import pytest
from hitl.v1 import decision_pb2
from sqlalchemy import text

from hitl_grpc.domain.values import Role
from tests.decisions_support import (
    scalar,
    submit,
    wait_for_database_time,
    when,
)
from tests.harness import Harness, ServerFactory

APPROVED = decision_pb2.DECISION_STATUS_APPROVED
REJECTED = decision_pb2.DECISION_STATUS_REJECTED
ESCALATED = decision_pb2.DECISION_STATUS_ESCALATED
BLOCK = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")


async def _status(server: Harness, analysis_id: str) -> decision_pb2.Decision:
    admin = await server.as_role(Role.ADMIN)
    reply = await server.decisions.GetDecision(
        decision_pb2.GetDecisionRequest(analysis_id=analysis_id), metadata=admin, timeout=10
    )
    return reply.decision


async def test_twenty_concurrent_verdicts_have_exactly_one_winner(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    analysts = [await server.as_role(Role.ANALYST) for _ in range(20)]
    results = await asyncio.gather(
        *(
            server.decisions.MakeDecision(
                decision_pb2.MakeDecisionRequest(
                    analysis_id=decision.analysis_id,
                    status=APPROVED if i % 2 else REJECTED,
                    notes=f"analyst {i}",
                ),
                metadata=md,
                timeout=30,
            )
            for i, md in enumerate(analysts)
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, decision_pb2.MakeDecisionResponse)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1 and len(losses) == 19
    assert {e.code() for e in losses} == {grpc.StatusCode.FAILED_PRECONDITION}
    stored = await _status(server, decision.analysis_id)
    assert stored.status == wins[0].decision.status
    assert stored.version == 2
    assert stored.resolution.notes == wins[0].decision.resolution.notes
    verdict_audits = await scalar(
        server,
        "SELECT count(*) FROM audit_events WHERE target = :id AND kind IN "
        "('decision.approved', 'decision.rejected')",
        id=decision.analysis_id,
    )
    assert verdict_audits == 1


async def test_racing_with_expected_version_loses_with_aborted(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    ana, bob = await server.as_role(Role.ANALYST), await server.as_role(Role.ANALYST)
    results = await asyncio.gather(
        *(
            server.decisions.ClaimDecision(
                decision_pb2.ClaimDecisionRequest(
                    analysis_id=decision.analysis_id, expected_version=decision.version
                ),
                metadata=md,
                timeout=10,
            )
            for md in (ana, bob)
        ),
        return_exceptions=True,
    )
    [loss] = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert loss.code() is grpc.StatusCode.ABORTED


async def test_approve_then_escalate_is_refused_and_stays_approved(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    analyst = await server.as_role(Role.ANALYST)
    approved = await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=decision.analysis_id, status=APPROVED, approved_actions=[BLOCK]
        ),
        metadata=analyst,
        timeout=10,
    )
    assert approved.decision.resolution.decided_by
    assert list(approved.decision.resolution.approved_actions) == [BLOCK]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.EscalateDecision(
            decision_pb2.EscalateDecisionRequest(analysis_id=decision.analysis_id, reason="why"),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    admin = await server.as_role(Role.ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(analysis_id=decision.analysis_id, status=REJECTED),
            metadata=admin,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    stored = await _status(server, decision.analysis_id)
    assert (stored.status, stored.version) == (APPROVED, 2)


async def test_stale_expected_version_is_aborted(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    analyst = await server.as_role(Role.ANALYST)
    await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=decision.analysis_id, status=REJECTED, expected_version=1
            ),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.ABORTED


async def test_claimed_item_is_resolved_only_by_claimer_or_admin(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    claimer, other = await server.as_role(Role.ANALYST), await server.as_role(Role.ANALYST)
    claimed = await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=claimer,
        timeout=10,
    )
    assert claimed.decision.status == decision_pb2.DECISION_STATUS_IN_REVIEW
    assert claimed.decision.claimed_by
    lease = (
        claimed.decision.claim_expires_at.ToDatetime() - claimed.decision.updated_at.ToDatetime()
    )
    assert lease == timedelta(minutes=10)
    for call in (
        server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(analysis_id=decision.analysis_id, status=REJECTED),
            metadata=other,
            timeout=10,
        ),
        server.decisions.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
            metadata=other,
            timeout=10,
        ),
        server.decisions.ReleaseDecision(
            decision_pb2.ReleaseDecisionRequest(analysis_id=decision.analysis_id),
            metadata=other,
            timeout=10,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    admin = await server.as_role(Role.ADMIN)
    done = await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(analysis_id=decision.analysis_id, status=REJECTED),
        metadata=admin,
        timeout=10,
    )
    assert done.decision.status == REJECTED
    assert not done.decision.claimed_by


async def test_claim_renews_and_release_returns_to_the_queue(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    analyst = await server.as_role(Role.ANALYST)
    first = await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    # SQLite's clock ticks in milliseconds: renew at a later instant than the claim.
    await wait_for_database_time(server, when(first.decision.updated_at))
    renewed = await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    assert (
        renewed.decision.claim_expires_at.ToDatetime()
        > first.decision.claim_expires_at.ToDatetime()
    )
    assert renewed.decision.version == 3
    released = await server.decisions.ReleaseDecision(
        decision_pb2.ReleaseDecisionRequest(analysis_id=decision.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    assert released.decision.status == decision_pb2.DECISION_STATUS_PENDING
    assert not released.decision.claimed_by
    assert not released.decision.HasField("claim_expires_at")


async def test_an_expired_lease_frees_the_item(make_server: ServerFactory) -> None:
    # The sweeper stays out of the way: the lapsed lease is judged by the next claim.
    async with make_server(claim_lease=timedelta(seconds=3), sweep_interval_s=3600) as server:
        await _lapsed_lease_scenario(server)


async def _lapsed_lease_scenario(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    first, second = await server.as_role(Role.ANALYST), await server.as_role(Role.ANALYST)
    claimed = await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=first,
        timeout=10,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
            metadata=second,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await wait_for_database_time(server, when(claimed.decision.claim_expires_at))
    taken = await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=second,
        timeout=10,
    )
    assert taken.decision.claimed_by != ""
    # The first analyst's lease is gone: their verdict is refused now.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(analysis_id=decision.analysis_id, status=REJECTED),
            metadata=first,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION


async def test_escalated_items_are_resolved_only_by_an_admin(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    analyst = await server.as_role(Role.ANALYST)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(analysis_id=decision.analysis_id, status=ESCALATED),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    escalated = await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=decision.analysis_id, status=ESCALATED, escalation_reason="unsure"
        ),
        metadata=analyst,
        timeout=10,
    )
    assert escalated.decision.status == ESCALATED
    assert escalated.decision.resolution.escalation_reason == "unsure"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(analysis_id=decision.analysis_id, status=APPROVED),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    admin = await server.as_role(Role.ADMIN)
    done = await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=decision.analysis_id, status=APPROVED, approved_actions=[BLOCK]
        ),
        metadata=admin,
        timeout=10,
    )
    assert done.decision.status == APPROVED
    assert done.decision.resolution.escalation_reason == "unsure"


async def test_approved_actions_must_be_recommended_or_custom(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    analyst = await server.as_role(Role.ANALYST)
    foreign = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="10.0.0.1")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=decision.analysis_id, status=APPROVED, approved_actions=[foreign]
            ),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    bare_custom = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_CUSTOM)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=decision.analysis_id, status=APPROVED, approved_actions=[bare_custom]
            ),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    custom = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_CUSTOM, description="call the ISP")
    done = await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=decision.analysis_id,
            status=APPROVED,
            approved_actions=[BLOCK, custom],
            notes="ok",
        ),
        metadata=analyst,
        timeout=10,
    )
    assert list(done.decision.resolution.approved_actions) == [BLOCK, custom]
    assert (await _status(server, decision.analysis_id)).version == 2


async def test_roles_are_enforced(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    viewer = await server.as_role(Role.VIEWER)
    service = await server.as_role(Role.SERVICE)
    for md in (viewer, service):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.decisions.ClaimDecision(
                decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
                metadata=md,
                timeout=10,
            )
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.ListPendingDecisions(
            decision_pb2.ListPendingDecisionsRequest(), metadata=viewer, timeout=10
        )
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_every_transition_is_audited_with_states_and_version(server: Harness) -> None:
    decision = await submit(server, await server.as_role(Role.SERVICE))
    analyst = await server.as_role(Role.ANALYST)
    await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=decision.analysis_id),
        metadata=analyst,
        timeout=10,
    )
    await server.decisions.EscalateDecision(
        decision_pb2.EscalateDecisionRequest(analysis_id=decision.analysis_id, reason="deep"),
        metadata=analyst,
        timeout=10,
    )
    async with server.running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT kind, actor, peer, details FROM audit_events "
                    "WHERE target = :id ORDER BY id"
                ),
                {"id": decision.analysis_id},
            )
        ).all()
        events = (
            await conn.execute(
                text(
                    "SELECT kind, version FROM decision_events WHERE analysis_id = :id "
                    "ORDER BY position"
                ),
                {"id": decision.analysis_id},
            )
        ).all()
    trail = [(kind, (json.loads(d) if isinstance(d, str) else d)) for kind, _a, _p, d in rows]
    assert [(k, d["from"], d["to"], d["version"]) for k, d in trail] == [
        ("decision.submit", "", "PENDING", "1"),
        ("decision.claim", "PENDING", "IN_REVIEW", "2"),
        ("decision.escalate", "IN_REVIEW", "ESCALATED", "3"),
    ]
    assert all(peer for _k, _a, peer, _d in rows)
    assert [tuple(e) for e in events] == [("added", 1), ("updated", 2), ("updated", 3)]
