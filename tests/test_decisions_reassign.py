"""ReassignDecision: the claimer or an admin hands an item to another analyst; the audit
keeps both, and the old holder's lease epoch is fenced off."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
import pytest
from hitl.v1 import audit_pb2, decision_pb2

from hitl_grpc.domain.values import Role
from tests.decisions_support import submit
from tests.harness import Harness, Metadata, ServerFactory, bearer
from tests.signin import rpc_error

BLOCK = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[Harness]:
    """A server with default settings."""
    async with make_server() as harness:
        yield harness


async def reassign(
    server: Harness, who: Metadata, analysis_id: str, assignee: str
) -> decision_pb2.ReassignDecisionResponse:
    return await server.decisions.ReassignDecision(
        decision_pb2.ReassignDecisionRequest(analysis_id=analysis_id, assignee=assignee),
        metadata=who,
        timeout=10,
    )


async def person(server: Harness, role: Role) -> tuple[str, Metadata]:
    user = await server.create_user(role)
    return user.username, bearer((await server.login(user.username)).tokens.access_token)


async def test_the_claimer_hands_over_and_the_audit_keeps_both(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    admin = await server.as_role(Role.ADMIN)
    ana_name, ana = await person(server, Role.ANALYST)
    bob_name, bob = await person(server, Role.ANALYST)
    submitted = await submit(server, service)
    claimed = await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=submitted.analysis_id),
        metadata=ana,
        timeout=10,
    )
    moved = await reassign(server, ana, submitted.analysis_id, bob_name)
    assert moved.decision.claimed_by == bob_name
    assert moved.decision.status == decision_pb2.DECISION_STATUS_IN_REVIEW
    assert moved.lease.epoch == claimed.lease.epoch + 1
    assert moved.lease.lease_id != claimed.lease.lease_id

    # Ana's lease is fenced off; Bob's works.
    stale = decision_pb2.MakeDecisionRequest(
        analysis_id=submitted.analysis_id,
        status=decision_pb2.DECISION_STATUS_APPROVED,
        approved_actions=[BLOCK],
        lease_epoch=claimed.lease.epoch,
    )
    err = await rpc_error(server.decisions.MakeDecision(stale, metadata=ana, timeout=10))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    stale.lease_epoch = moved.lease.epoch
    done = await server.decisions.MakeDecision(stale, metadata=bob, timeout=10)
    assert done.decision.resolution.decided_by == bob_name

    trail = await server.audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(kind="decision.reassign"), metadata=admin, timeout=10
    )
    [event] = trail.events
    assert event.actor == ana_name
    assert event.target == submitted.analysis_id
    assert event.details["from_claimer"] == ana_name
    assert event.details["to_claimer"] == bob_name


async def test_only_the_claimer_or_an_admin_may_reassign(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    admin = await server.as_role(Role.ADMIN)
    _, ana = await person(server, Role.ANALYST)
    bob_name, bob = await person(server, Role.ANALYST)
    carol_name, _ = await person(server, Role.ANALYST)
    submitted = await submit(server, service)
    # Unclaimed: an analyst may not push it onto someone; an admin may assign it.
    err = await rpc_error(reassign(server, ana, submitted.analysis_id, bob_name))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assigned = await reassign(server, admin, submitted.analysis_id, bob_name)
    assert assigned.decision.claimed_by == bob_name
    err = await rpc_error(reassign(server, ana, submitted.analysis_id, carol_name))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "claimer" in (err.details() or "")
    err = await rpc_error(reassign(server, bob, submitted.analysis_id, bob_name))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    taken = await reassign(server, admin, submitted.analysis_id, carol_name)
    assert taken.decision.claimed_by == carol_name


async def test_the_assignee_must_be_an_active_reviewer(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    admin = await server.as_role(Role.ADMIN)
    viewer_name, _ = await person(server, Role.VIEWER)
    submitted = await submit(server, service)
    err = await rpc_error(reassign(server, admin, submitted.analysis_id, viewer_name))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "viewer" in (err.details() or "")
    err = await rpc_error(reassign(server, admin, submitted.analysis_id, "nobody-here"))
    assert err.code() is grpc.StatusCode.NOT_FOUND
    err = await rpc_error(reassign(server, admin, submitted.analysis_id, ""))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("role", [Role.VIEWER, Role.SERVICE])
async def test_the_new_rpcs_are_for_analysts_and_admins_only(server: Harness, role: Role) -> None:
    who = await server.as_role(role)
    calls: list[Awaitable[Any]] = [
        server.decisions.RenewLease(
            decision_pb2.RenewLeaseRequest(analysis_id="an-1", lease_epoch=1),
            metadata=who,
            timeout=10,
        ),
        server.decisions.ReassignDecision(
            decision_pb2.ReassignDecisionRequest(analysis_id="an-1", assignee="bob"),
            metadata=who,
            timeout=10,
        ),
        server.decisions.MakeDecisions(
            decision_pb2.MakeDecisionsRequest(
                items=[decision_pb2.MakeDecisionsItem(analysis_id="an-1")],
                status=decision_pb2.DECISION_STATUS_REJECTED,
            ),
            metadata=who,
            timeout=10,
        ),
    ]
    for call in calls:
        err = await rpc_error(call)
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
