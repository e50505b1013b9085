"""The pure lifecycle of leases and per-action verdicts: no server, no database."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from hitl_grpc.domain import errors, lifecycle
from hitl_grpc.domain.values import Action, ActionType, ActionVerdictStatus, Decision, Role, Status
from tests.lifecycle_support import ADMIN, ANA, BLOCK, BOB, LEASE, at, pending, principal, verdict

KILL = Action(ActionType.ACTIVATE_KILLSWITCH, "dc-1")
RULES = lifecycle.ApprovalRules({ActionType.ACTIVATE_KILLSWITCH: 2})
CAROL = principal("carol")


def with_kill() -> Decision:
    d = pending()
    analysis = dataclasses.replace(d.analysis, recommended_actions=(BLOCK, KILL))
    return dataclasses.replace(
        d, analysis=analysis, action_verdicts=lifecycle.initial_verdicts(analysis, RULES)
    )


def test_each_new_claim_draws_the_next_epoch_and_a_renewal_keeps_it() -> None:
    first = lifecycle.claim(pending(), ANA, at(0), LEASE, "lease-a").decision
    assert (first.lease_id, first.lease_epoch) == ("lease-a", 1)
    renewed = lifecycle.claim(first, ANA, at(1), LEASE, "ignored").decision
    assert (renewed.lease_id, renewed.lease_epoch) == ("lease-a", 1)
    assert renewed.claim_expires_at == at(1) + LEASE
    lapsed = lifecycle.lease_lapsed(renewed, at(10)).decision
    assert lapsed.lease_epoch == 1 and lapsed.lease_id == ""
    again = lifecycle.claim(lapsed, BOB, at(11), LEASE, "lease-b").decision
    assert (again.lease_id, again.lease_epoch) == ("lease-b", 2)


def test_a_fenced_verdict_needs_the_live_lease_of_its_epoch() -> None:
    claimed = lifecycle.claim(pending(), ANA, at(0), LEASE, "a").decision
    lifecycle.decide(claimed, verdict(Status.APPROVED, BLOCK), ANA, at(1), None, 1)
    with pytest.raises(errors.WrongState, match="stale"):
        lifecycle.decide(claimed, verdict(Status.APPROVED, BLOCK), ANA, at(1), None, 2)
    with pytest.raises(errors.WrongState, match="lapsed"):
        lifecycle.decide(claimed, verdict(Status.APPROVED, BLOCK), ANA, at(6), None, 1)
    with pytest.raises(errors.WrongState, match="held by"):
        lifecycle.decide(claimed, verdict(Status.APPROVED, BLOCK), ADMIN, at(1), None, 1)
    with pytest.raises(errors.WrongState, match="lapsed"):
        lifecycle.renew(claimed, ANA, at(6), LEASE, 1)


def test_an_approval_short_of_approvers_goes_back_to_the_queue() -> None:
    claimed = lifecycle.claim(with_kill(), ANA, at(0), LEASE, "a").decision
    step = lifecycle.decide(claimed, verdict(Status.APPROVED, BLOCK, KILL), ANA, at(1), RULES)
    assert step.kind is lifecycle.AuditKind.APPROVAL
    after = step.decision
    assert after.status is Status.PENDING and after.claimed_by == "" and after.resolution is None
    assert [v.status for v in after.action_verdicts] == [
        ActionVerdictStatus.APPROVED,
        ActionVerdictStatus.PENDING,
    ]
    assert lifecycle.is_allowed(claimed.status, after.status)
    with pytest.raises(errors.WrongState, match="already approved"):
        lifecycle.decide(after, verdict(Status.APPROVED, KILL), ANA, at(2), RULES)
    done = lifecycle.decide(after, verdict(Status.APPROVED, KILL), BOB, at(2), RULES).decision
    assert done.status is Status.APPROVED
    assert done.resolution is not None and done.resolution.approved_actions == (BLOCK, KILL)
    assert done.action_verdicts[1].approved_by == ("ana", "bob")
    # Closed: a third approver finds nothing left to approve.
    with pytest.raises(errors.WrongState, match="already APPROVED"):
        lifecycle.decide(done, verdict(Status.APPROVED, KILL), CAROL, at(3), RULES)


def test_the_submitter_never_counts_as_an_approver_of_a_two_person_action() -> None:
    submitter = principal(with_kill().submitted_by, Role.ADMIN)
    with pytest.raises(errors.PermissionDenied, match="submitted"):
        lifecycle.decide(with_kill(), verdict(Status.APPROVED, KILL), submitter, at(1), RULES)
    # A one-person action is theirs to approve, as before.
    done = lifecycle.decide(with_kill(), verdict(Status.APPROVED, BLOCK), submitter, at(1), RULES)
    assert done.decision.status is Status.APPROVED


def test_an_escalated_item_waits_for_a_second_admin() -> None:
    escalated = lifecycle.escalate(with_kill(), "senior eyes", ANA, at(1)).decision
    first = lifecycle.decide(escalated, verdict(Status.APPROVED, KILL), ADMIN, at(2), RULES)
    assert first.decision.status is Status.ESCALATED
    second_admin = principal("root2", Role.ADMIN)
    done = lifecycle.decide(
        first.decision, verdict(Status.APPROVED, KILL), second_admin, at(3), RULES
    )
    assert done.decision.status is Status.APPROVED
    assert done.decision.resolution is not None
    assert done.decision.resolution.escalation_reason == "senior eyes"


def test_reassigning_fences_the_previous_holder() -> None:
    claimed = lifecycle.claim(pending(), ANA, at(0), LEASE, "a").decision
    step = lifecycle.reassign(claimed, ANA, "bob", at(1), LEASE, "b")
    moved = step.decision
    assert (moved.claimed_by, moved.lease_epoch, moved.lease_id) == ("bob", 2, "b")
    assert step.details == {"from_claimer": "ana", "to_claimer": "bob"}
    with pytest.raises(errors.WrongState, match="stale"):
        lifecycle.decide(moved, verdict(Status.APPROVED, BLOCK), ANA, at(2), None, 1)
    with pytest.raises(errors.PermissionDenied):
        lifecycle.reassign(moved, ANA, "carol", at(2), LEASE, "c")
    assert lifecycle.reassign(moved, ADMIN, "carol", at(2), LEASE, "c").decision.lease_epoch == 3
    with pytest.raises(errors.PermissionDenied):
        lifecycle.reassign(pending(), ANA, "bob", at(0), LEASE, "x")
    assert lifecycle.reassign(
        pending(), ADMIN, "bob", at(0), timedelta(minutes=1), "x"
    ).details == {
        "from_claimer": "",
        "to_claimer": "bob",
    }
