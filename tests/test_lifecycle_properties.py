"""Random runs of the state machine: whatever callers and the sweeper try, in any order and
at any time, the lifecycle's invariants hold."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from hitl_grpc.domain import errors, lifecycle
from hitl_grpc.domain.lifecycle import Transition
from hitl_grpc.domain.values import Action, ActionType, Decision, Status
from tests.lifecycle_support import ADMIN, ANA, BLOCK, BOB, LEASE, T0, pending, verdict

Step = Callable[[Decision, datetime], Transition]

_FORGED = Action(ActionType.BLOCK_IP, "198.51.100.1")

# Every transition a caller or the sweeper can attempt, by name (shown when a run fails).
STEPS: dict[str, Step] = {
    "claim by ana": lambda d, now: lifecycle.claim(d, ANA, now, LEASE),
    "claim by bob": lambda d, now: lifecycle.claim(d, BOB, now, LEASE),
    "release by ana": lambda d, now: lifecycle.release(d, ANA, now),
    "release by admin": lambda d, now: lifecycle.release(d, ADMIN, now),
    "approve by ana": lambda d, now: lifecycle.decide(d, verdict(Status.APPROVED, BLOCK), ANA, now),
    "approve forged by bob": lambda d, now: lifecycle.decide(
        d, verdict(Status.APPROVED, _FORGED), BOB, now
    ),
    "reject by bob": lambda d, now: lifecycle.decide(d, verdict(Status.REJECTED), BOB, now),
    "reject by admin": lambda d, now: lifecycle.decide(d, verdict(Status.REJECTED), ADMIN, now),
    "make escalated by ana": lambda d, now: lifecycle.decide(
        d, verdict(Status.ESCALATED, reason="why"), ANA, now
    ),
    "escalate by bob": lambda d, now: lifecycle.escalate(d, "unsure", BOB, now),
    "sweep: expire": lifecycle.expire,
    "sweep: sla": lifecycle.sla_escalate,
    "sweep: lease": lifecycle.lease_lapsed,
}

# A refusal is always one of the errors the servicers map to a status; nothing else escapes.
REFUSALS = (errors.WrongState, errors.PermissionDenied, errors.InvalidField)


def _attempt(
    step: Step, decision: Decision, now: datetime
) -> tuple[Transition | None, errors.DomainError | None]:
    try:
        return step(decision, now), None
    except REFUSALS as refused:
        return None, refused


runs = st.lists(
    st.tuples(
        st.sampled_from(sorted(STEPS)),
        # Minutes since the previous attempt: often within a lease, sometimes past the SLA.
        st.integers(min_value=0, max_value=20),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None, database=None)
@given(run=runs, expires_in=st.one_of(st.none(), st.integers(min_value=1, max_value=120)))
def test_no_run_breaks_the_lifecycle(run: list[tuple[str, int]], expires_in: int | None) -> None:
    decision = pending(expires_in=None if expires_in is None else timedelta(minutes=expires_in))
    now = T0
    terminal_reached = 0
    for name, minutes in run:
        now += timedelta(minutes=minutes)
        before = decision
        step, refusal = _attempt(STEPS[name], decision, now)
        if refusal is not None:
            if before.status in lifecycle.TERMINAL:
                # A closed decision refuses every change the same way: FAILED_PRECONDITION.
                assert type(refusal) is errors.WrongState, name
                assert f"already {before.status.name}" in refusal.message, name
            continue
        assert step is not None
        assert before.status not in lifecycle.TERMINAL, f"{name} changed a closed decision"
        decision = step.decision
        assert lifecycle.is_allowed(before.status, decision.status), name
        assert decision.version == before.version + 1, name
        assert decision.updated_at == now >= before.updated_at, name
        assert decision.analysis == before.analysis, name
        assert (decision.created_at, decision.sla_deadline) == (
            before.created_at,
            before.sla_deadline,
        )
        # A claim exists exactly while someone reviews.
        assert bool(decision.claimed_by) == (decision.status is Status.IN_REVIEW), name
        assert (decision.claim_expires_at is not None) == bool(decision.claimed_by), name
        # A resolution exists exactly once the decision left the analysts' queue.
        if decision.status in lifecycle.WORKABLE:
            assert decision.resolution is None, name
        else:
            assert decision.resolution is not None, name
            assert decision.resolution.status is decision.status, name
            assert decision.resolution.decided_at == now, name
        # A breach is recorded only once the deadline has passed.
        assert not step.sla_breached or now >= decision.sla_deadline, name
        if decision.status in lifecycle.TERMINAL:
            terminal_reached += 1
    assert terminal_reached <= 1
