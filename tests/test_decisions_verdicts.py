"""Per-action verdicts and the two-person rule: each action judged on its own, with a hash
CANDI checks, and the dangerous ones approved only by enough distinct people."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from hitl.v1 import audit_pb2, decision_pb2

from hitl_grpc.domain.values import ActionType, Role
from tests.decisions_support import submit
from tests.harness import Harness, Metadata, ServerFactory
from tests.signin import rpc_error
from tests.watching import next_of, watch_live

BLOCK = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
QUARANTINE = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_QUARANTINE_SYSTEM, target="host-7")
KILL = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="dc-1 uplink")
APPROVED = decision_pb2.DECISION_STATUS_APPROVED
V_PENDING = decision_pb2.ACTION_VERDICT_STATUS_PENDING
V_APPROVED = decision_pb2.ACTION_VERDICT_STATUS_APPROVED
V_REJECTED = decision_pb2.ACTION_VERDICT_STATUS_REJECTED


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[Harness]:
    """A server with the default two-person rule and no step-up (tested on its own)."""
    async with make_server(step_up_actions=frozenset()) as harness:
        yield harness


def expected_hash(action: decision_pb2.Action) -> str:
    """The documented canonical hash, computed apart from the server's code."""
    name = decision_pb2.ActionType.Name(action.type)
    text = '{"target":' + json.dumps(action.target, ensure_ascii=False) + ',"type":"' + name + '"}'
    return hashlib.sha256(text.encode()).hexdigest()


async def approve(
    server: Harness, who: Metadata, analysis_id: str, *actions: decision_pb2.Action
) -> decision_pb2.Decision:
    reply = await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=analysis_id, status=APPROVED, approved_actions=actions
        ),
        metadata=who,
        timeout=10,
    )
    return reply.decision


async def reject(server: Harness, who: Metadata, analysis_id: str) -> decision_pb2.Decision:
    reply = await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=analysis_id, status=decision_pb2.DECISION_STATUS_REJECTED
        ),
        metadata=who,
        timeout=10,
    )
    return reply.decision


def by_type(decision: decision_pb2.Decision) -> dict[int, decision_pb2.ActionVerdict]:
    return {v.type: v for v in decision.action_verdicts}


async def test_one_decision_approves_one_action_and_rejects_another(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    submitted = await submit(server, service, recommended_actions=[BLOCK, QUARANTINE])
    assert [v.status for v in submitted.action_verdicts] == [V_PENDING, V_PENDING]
    assert [v.recommended_index for v in submitted.action_verdicts] == [0, 1]

    done = await approve(server, ana, submitted.analysis_id, BLOCK)
    assert done.status == APPROVED
    assert list(done.resolution.approved_actions) == [BLOCK]
    verdicts = by_type(done)
    block = verdicts[decision_pb2.ACTION_TYPE_BLOCK_IP]
    quarantine = verdicts[decision_pb2.ACTION_TYPE_QUARANTINE_SYSTEM]
    assert block.status == V_APPROVED and quarantine.status == V_REJECTED
    user = done.resolution.decided_by
    assert list(block.approved_by) == [user] and quarantine.rejected_by == user
    assert block.action_hash == expected_hash(BLOCK)
    assert quarantine.action_hash == expected_hash(QUARANTINE)
    assert block.action_hash != quarantine.action_hash
    # CANDI's check: the hash of what it is about to run, against the approved hash.
    recommended = done.recommended_actions[block.recommended_index]
    assert expected_hash(recommended) == block.action_hash


async def test_a_killswitch_needs_two_distinct_approvers(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    bob = await server.as_role(Role.ANALYST)
    admin = await server.as_role(Role.ADMIN)
    submitted = await submit(server, service, recommended_actions=[BLOCK, KILL])
    assert by_type(submitted)[KILL.type].required_approvals == 2
    assert by_type(submitted)[BLOCK.type].required_approvals == 1
    stream = await watch_live(server, admin)

    await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=submitted.analysis_id),
        metadata=ana,
        timeout=10,
    )
    assert (await next_of(stream)).HasField("updated")
    partial = await approve(server, ana, submitted.analysis_id, BLOCK, KILL)
    # Back to the queue, unclaimed, for the second approver.
    assert partial.status == decision_pb2.DECISION_STATUS_PENDING
    assert partial.claimed_by == ""
    assert not partial.HasField("resolution")
    kill = by_type(partial)[KILL.type]
    ana_name = list(kill.approved_by)
    assert kill.status == V_PENDING and len(ana_name) == 1
    assert by_type(partial)[BLOCK.type].status == V_APPROVED
    # The partial approval is on the stream too.
    streamed = (await next_of(stream)).updated
    assert list(by_type(streamed)[KILL.type].approved_by) == ana_name

    err = await rpc_error(approve(server, ana, submitted.analysis_id, KILL))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "already approved" in (err.details() or "")

    done = await approve(server, bob, submitted.analysis_id, KILL)
    assert done.status == APPROVED
    assert list(done.resolution.approved_actions) == [BLOCK, KILL]
    kill = by_type(done)[KILL.type]
    assert kill.status == V_APPROVED
    assert len(kill.approved_by) == 2 and len(set(kill.approved_by)) == 2
    trail = await server.audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(target=submitted.analysis_id), metadata=admin, timeout=10
    )
    kinds = [e.kind for e in reversed(trail.events)]
    assert kinds == [
        "decision.submit",
        "decision.claim",
        "decision.approval",
        "decision.approved",
    ]
    approval = next(e for e in trail.events if e.kind == "decision.approval")
    assert expected_hash(KILL) in approval.details["approved"]


async def test_the_submitter_may_not_approve_a_two_person_action(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    submitted = await submit(server, admin, recommended_actions=[KILL])
    err = await rpc_error(approve(server, admin, submitted.analysis_id, KILL))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "submitted" in (err.details() or "")


async def test_a_rejection_by_any_approver_rejects(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    bob = await server.as_role(Role.ANALYST)
    submitted = await submit(server, service, recommended_actions=[BLOCK, KILL])
    await approve(server, ana, submitted.analysis_id, BLOCK, KILL)
    done = await reject(server, bob, submitted.analysis_id)
    assert done.status == decision_pb2.DECISION_STATUS_REJECTED
    assert list(done.resolution.approved_actions) == []
    assert {v.status for v in done.action_verdicts} == {V_REJECTED}
    kill = by_type(done)[KILL.type]
    assert len(kill.approved_by) == 1 and kill.rejected_by == done.resolution.decided_by


async def test_leaving_a_pending_action_out_rejects_only_that_action(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    bob = await server.as_role(Role.ANALYST)
    submitted = await submit(server, service, recommended_actions=[BLOCK, KILL])
    await approve(server, ana, submitted.analysis_id, BLOCK, KILL)
    done = await approve(server, bob, submitted.analysis_id)
    assert done.status == APPROVED
    assert list(done.resolution.approved_actions) == [BLOCK]
    assert by_type(done)[KILL.type].status == V_REJECTED


async def test_two_approvers_racing_for_the_last_slot_count_once(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    racers = [await server.as_role(Role.ANALYST) for _ in range(2)]
    for _ in range(3):
        submitted = await submit(server, service, recommended_actions=[KILL])
        await approve(server, ana, submitted.analysis_id, KILL)
        results = await asyncio.gather(
            *(approve(server, who, submitted.analysis_id, KILL) for who in racers),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, decision_pb2.Decision)]
        lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == 1, results
        assert lost[0].code() is grpc.StatusCode.FAILED_PRECONDITION
        kill = by_type(won[0])[KILL.type]
        assert won[0].status == APPROVED
        assert len(kill.approved_by) == 2 and len(set(kill.approved_by)) == 2


async def test_three_approvers_racing_from_none_count_exactly_two(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    racers = [await server.as_role(Role.ANALYST) for _ in range(3)]
    submitted = await submit(server, service, recommended_actions=[KILL])
    results = await asyncio.gather(
        *(approve(server, who, submitted.analysis_id, KILL) for who in racers),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, decision_pb2.Decision)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert sorted(d.status for d in won) == [decision_pb2.DECISION_STATUS_PENDING, APPROVED]
    assert [e.code() for e in lost] == [grpc.StatusCode.FAILED_PRECONDITION]
    final = next(d for d in won if d.status == APPROVED)
    assert len(set(by_type(final)[KILL.type].approved_by)) == 2


async def test_the_required_count_is_configurable(make_server: ServerFactory) -> None:
    async with make_server(
        step_up_actions=frozenset(), approvals_required={ActionType.BLOCK_IP: 3}
    ) as server:
        service = await server.as_role(Role.SERVICE)
        people = [await server.as_role(Role.ANALYST) for _ in range(3)]
        submitted = await submit(server, service, recommended_actions=[BLOCK, KILL])
        # ACTIVATE_KILLSWITCH is no longer listed: one approver will do for it.
        assert by_type(submitted)[KILL.type].required_approvals == 1
        assert by_type(submitted)[BLOCK.type].required_approvals == 3
        first = await approve(server, people[0], submitted.analysis_id, BLOCK, KILL)
        assert by_type(first)[KILL.type].status == V_APPROVED
        second = await approve(server, people[1], submitted.analysis_id, BLOCK)
        assert second.status == decision_pb2.DECISION_STATUS_PENDING
        third = await approve(server, people[2], submitted.analysis_id, BLOCK)
        assert third.status == APPROVED
        assert len(by_type(third)[BLOCK.type].approved_by) == 3
