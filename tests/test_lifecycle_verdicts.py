"""The pure lifecycle of leases and per-action verdicts: no server, no database."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hitl_grpc.domain import errors, lifecycle
from hitl_grpc.domain.values import (
    Action,
    ActionType,
    ActionVerdictStatus,
    Decision,
    Principal,
    Role,
    Status,
)
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


def _fenced(who: Principal, stale: bool) -> Callable[[Decision, datetime], lifecycle.Transition]:
    def step(d: Decision, now: datetime) -> lifecycle.Transition:
        epoch = d.lease_epoch - 1 if stale else d.lease_epoch
        return lifecycle.decide(d, verdict(Status.APPROVED, BLOCK, KILL), who, now, RULES, epoch)

    return step


def _claim_by(who: Principal) -> Callable[[Decision, datetime], lifecycle.Transition]:
    return lambda d, now: lifecycle.claim(d, who, now, LEASE, f"l-{who.username}-{now:%H%M}")


def _approve_both_by(who: Principal) -> Callable[[Decision, datetime], lifecycle.Transition]:
    return lambda d, now: lifecycle.decide(
        d, verdict(Status.APPROVED, BLOCK, KILL), who, now, RULES
    )


# Every attempt of several people on a decision that recommends BLOCK_IP and a killswitch.
TWO_PERSON_STEPS: dict[str, Callable[[Decision, datetime], lifecycle.Transition]] = {
    **{f"claim by {p.username}": _claim_by(p) for p in (ANA, BOB, CAROL)},
    **{f"approve both by {p.username}": _approve_both_by(p) for p in (ANA, BOB, CAROL, ADMIN)},
    "approve kill by bob": lambda d, now: lifecycle.decide(
        d, verdict(Status.APPROVED, KILL), BOB, now, RULES
    ),
    "approve block only by carol": lambda d, now: lifecycle.decide(
        d, verdict(Status.APPROVED, BLOCK), CAROL, now, RULES
    ),
    "fenced approve by ana": _fenced(ANA, stale=False),
    "stale approve by bob": _fenced(BOB, stale=True),
    "reject by carol": lambda d, now: lifecycle.decide(
        d, verdict(Status.REJECTED), CAROL, now, RULES
    ),
    "renew by ana": lambda d, now: lifecycle.renew(d, ANA, now, LEASE, d.lease_epoch),
    "reassign to bob by admin": lambda d, now: lifecycle.reassign(d, ADMIN, "bob", now, LEASE, "r"),
    "reassign to carol by ana": lambda d, now: lifecycle.reassign(d, ANA, "carol", now, LEASE, "r"),
    "escalate by ana": lambda d, now: lifecycle.escalate(d, "senior", ANA, now),
    "sweep: lease": lifecycle.lease_lapsed,
}


@settings(max_examples=300, deadline=None, database=None)
@given(
    run=st.lists(
        st.tuples(st.sampled_from(sorted(TWO_PERSON_STEPS)), st.integers(min_value=0, max_value=7)),
        max_size=30,
    )
)
def test_no_run_counts_an_approver_twice_or_lets_one_person_fire_the_killswitch(
    run: list[tuple[str, int]],
) -> None:
    decision = with_kill()
    now = at(0)
    for name, minutes in run:
        now += timedelta(minutes=minutes)
        before = decision
        try:
            decision = TWO_PERSON_STEPS[name](decision, now).decision
        except (errors.WrongState, errors.PermissionDenied):
            continue
        assert lifecycle.is_allowed(before.status, decision.status), name
        # The fence only moves forward, and a lease id exists exactly while claimed.
        assert decision.lease_epoch >= before.lease_epoch, name
        assert bool(decision.lease_id) == (decision.status is Status.IN_REVIEW), name
        for v in decision.action_verdicts:
            assert len(set(v.approved_by)) == len(v.approved_by), name
            assert len(v.approved_by) <= v.required_approvals, name
            assert decision.submitted_by not in v.approved_by or v.required_approvals == 1
            if v.status is ActionVerdictStatus.APPROVED:
                assert len(v.approved_by) == v.required_approvals, name
        if decision.status is Status.APPROVED:
            assert decision.resolution is not None
            assert all(
                v.status is not ActionVerdictStatus.PENDING for v in decision.action_verdicts
            )
            approved = {
                (v.action.type, v.action.target)
                for v in decision.action_verdicts
                if v.status is ActionVerdictStatus.APPROVED
            }
            assert {(a.type, a.target) for a in decision.resolution.approved_actions} == approved
        if decision.status is Status.REJECTED:
            assert {v.status for v in decision.action_verdicts} == {ActionVerdictStatus.REJECTED}
