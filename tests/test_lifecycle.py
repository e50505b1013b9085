"""The state machine as pure functions: each transition's guard and effect, without a server."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hitl_grpc.domain import errors, lifecycle
from hitl_grpc.domain.decisions import visible_to
from hitl_grpc.domain.lifecycle import AuditKind
from hitl_grpc.domain.values import Action, ActionType, Decision, Role, Status
from tests.lifecycle_support import (
    ADMIN,
    ANA,
    BLOCK,
    BOB,
    CANDI,
    LEASE,
    SLA,
    T0,
    at,
    pending,
    principal,
    verdict,
)


def test_audit_kinds_keep_the_names_stored_in_the_trail() -> None:
    assert {k.value for k in AuditKind} == {
        "decision.submit",
        "decision.claim",
        "decision.release",
        "decision.approved",
        "decision.rejected",
        "decision.escalate",
        "decision.expire",
        "decision.sla_escalate",
        "decision.lease_expired",
        "decision.lease_renew",
        "decision.approval",
        "decision.reassign",
    }


def test_claim_puts_the_decision_under_review_with_a_lease() -> None:
    before = pending()
    step = lifecycle.claim(before, ANA, at(1), LEASE)
    after = step.decision
    assert (after.status, after.claimed_by, after.claim_expires_at) == (
        Status.IN_REVIEW,
        "ana",
        at(1) + LEASE,
    )
    assert (after.version, after.updated_at) == (2, at(1))
    assert (step.kind, step.sla_breached) == (AuditKind.CLAIM, False)
    assert after.analysis == before.analysis and after.resolution is None


def test_claimer_renews_but_another_analyst_waits_for_the_lease() -> None:
    claimed = lifecycle.claim(pending(), ANA, at(1), LEASE).decision
    renewed = lifecycle.claim(claimed, ANA, at(3), LEASE).decision
    assert renewed.claim_expires_at == at(3) + LEASE
    with pytest.raises(errors.WrongState, match="claimed by ana"):
        lifecycle.claim(renewed, BOB, at(4), LEASE)
    taken = lifecycle.claim(renewed, BOB, at(3) + LEASE, LEASE).decision
    assert taken.claimed_by == "bob"


@pytest.mark.parametrize(
    ("decision", "message"),
    [
        (pending(expires_in=timedelta(minutes=1)), "has expired"),
        (lifecycle.escalate(pending(), "odd", ANA, at(0)).decision, "an admin resolves it"),
        (lifecycle.decide(pending(), verdict(Status.REJECTED), ANA, at(0)).decision, "REJECTED"),
    ],
)
def test_claim_is_refused_when_not_claimable(decision: Decision, message: str) -> None:
    with pytest.raises(errors.WrongState, match=message):
        lifecycle.claim(decision, ANA, at(2), LEASE)


def test_release_returns_a_claimed_decision_and_only_the_claimer_or_an_admin_may() -> None:
    claimed = lifecycle.claim(pending(), ANA, at(1), LEASE).decision
    with pytest.raises(errors.WrongState, match="claimed by ana"):
        lifecycle.release(claimed, BOB, at(2))
    for who in (ANA, ADMIN):
        step = lifecycle.release(claimed, who, at(2))
        assert (step.decision.status, step.decision.claimed_by) == (Status.PENDING, "")
        assert step.decision.claim_expires_at is None
        assert (step.kind, step.decision.version) == (AuditKind.RELEASE, 3)
    with pytest.raises(errors.WrongState, match="not claimed"):
        lifecycle.release(pending(), ANA, at(2))


def test_approval_records_the_verdict_and_frees_the_claim() -> None:
    claimed = lifecycle.claim(pending(), ANA, at(1), LEASE).decision
    step = lifecycle.decide(claimed, verdict(Status.APPROVED, BLOCK, notes="go"), ANA, at(2))
    after = step.decision
    assert (after.status, after.claimed_by, after.claim_expires_at) == (Status.APPROVED, "", None)
    assert after.resolution is not None
    assert (after.resolution.status, after.resolution.approved_actions) == (
        Status.APPROVED,
        (BLOCK,),
    )
    assert (after.resolution.notes, after.resolution.decided_by) == ("go", "ana")
    assert after.resolution.decided_at == at(2)
    assert (step.kind, step.sla_breached) == (AuditKind.APPROVED, False)


def test_a_verdict_after_the_sla_deadline_records_the_breach() -> None:
    step = lifecycle.decide(pending(), verdict(Status.REJECTED), ANA, T0 + SLA + timedelta(1))
    assert (step.kind, step.sla_breached) == (AuditKind.REJECTED, True)
    on_time = lifecycle.decide(pending(), verdict(Status.REJECTED), ANA, T0 + SLA)
    assert not on_time.sla_breached


def test_only_recommended_or_custom_actions_may_be_approved() -> None:
    other = Action(ActionType.BLOCK_IP, "198.51.100.1")
    with pytest.raises(errors.InvalidField) as caught:
        lifecycle.decide(pending(), verdict(Status.APPROVED, other), ANA, at(1))
    assert [v.field for v in caught.value.violations] == ["approved_actions[0]"]
    custom = Action(ActionType.CUSTOM, "", "call the owner")
    assert lifecycle.decide(pending(), verdict(Status.APPROVED, custom), ANA, at(1)).decision


def test_another_analysts_live_claim_blocks_a_verdict_but_not_an_admins() -> None:
    claimed = lifecycle.claim(pending(), ANA, at(1), LEASE).decision
    with pytest.raises(errors.WrongState, match="claimed by ana"):
        lifecycle.decide(claimed, verdict(Status.REJECTED), BOB, at(2))
    assert lifecycle.decide(claimed, verdict(Status.REJECTED), ADMIN, at(2)).decision.status is (
        Status.REJECTED
    )


def test_an_escalated_decision_is_an_admins_and_keeps_its_reason() -> None:
    escalated = lifecycle.decide(
        pending(), verdict(Status.ESCALATED, notes="n", reason="unsure"), ANA, at(1)
    )
    assert escalated.kind is AuditKind.ESCALATE
    assert escalated.decision.resolution is not None
    assert escalated.decision.resolution.notes == "n"
    with pytest.raises(errors.PermissionDenied, match="only an admin"):
        lifecycle.decide(escalated.decision, verdict(Status.APPROVED), ANA, at(2))
    with pytest.raises(errors.WrongState, match="already ESCALATED"):
        lifecycle.escalate(escalated.decision, "again", ADMIN, at(2))
    approved = lifecycle.decide(escalated.decision, verdict(Status.APPROVED), ADMIN, at(3))
    assert approved.decision.resolution is not None
    assert approved.decision.resolution.escalation_reason == "unsure"
    assert approved.decision.resolution.decided_by == "root"


def test_expiry_closes_an_open_decision_once_its_time_has_passed() -> None:
    decision = pending(expires_in=timedelta(minutes=20))
    with pytest.raises(errors.WrongState, match="not past its expires_at"):
        lifecycle.expire(decision, at(19))
    step = lifecycle.expire(decision, at(20))
    assert step.decision.status is Status.EXPIRED
    assert step.decision.resolution is not None
    assert step.decision.resolution.decided_by == lifecycle.SYSTEM_ACTOR
    # Past the 15-minute SLA as well.
    assert (step.kind, step.sla_breached) == (AuditKind.EXPIRE, True)
    with pytest.raises(errors.WrongState, match="already EXPIRED"):
        lifecycle.expire(step.decision, at(21))


def test_sla_escalation_applies_only_to_overdue_work() -> None:
    with pytest.raises(errors.WrongState, match="not overdue"):
        lifecycle.sla_escalate(pending(), T0 + SLA - timedelta(microseconds=1))
    step = lifecycle.sla_escalate(pending(), T0 + SLA)
    assert step.decision.resolution is not None
    assert step.decision.resolution.escalation_reason == lifecycle.SLA_REASON
    assert (step.decision.status, step.kind, step.sla_breached) == (
        Status.ESCALATED,
        AuditKind.SLA_ESCALATE,
        True,
    )
    with pytest.raises(errors.WrongState, match="not overdue"):
        lifecycle.sla_escalate(step.decision, at(60))


def test_a_lapsed_lease_returns_the_decision_to_the_queue() -> None:
    claimed = lifecycle.claim(pending(), ANA, at(1), LEASE).decision
    with pytest.raises(errors.WrongState, match="lapsed lease"):
        lifecycle.lease_lapsed(claimed, at(2))
    step = lifecycle.lease_lapsed(claimed, at(1) + LEASE)
    assert (step.decision.status, step.decision.claimed_by, step.kind) == (
        Status.PENDING,
        "",
        AuditKind.LEASE_EXPIRED,
    )


def test_a_stale_expected_version_is_a_version_conflict() -> None:
    lifecycle.check_version(pending(), 1)
    lifecycle.check_version(pending(), None)
    with pytest.raises(errors.VersionConflict, match="at version 1, not 2"):
        lifecycle.check_version(pending(), 2)


def test_a_service_sees_only_the_decisions_it_submitted() -> None:
    decision = pending()
    assert visible_to(CANDI, decision)
    assert not visible_to(principal("other-engine", Role.SERVICE), decision)
    assert all(visible_to(p, decision) for p in (ANA, ADMIN, principal("v", Role.VIEWER)))
