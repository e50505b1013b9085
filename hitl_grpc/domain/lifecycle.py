"""The decision state machine: every transition, its guard and its effect, as pure functions.

```
PENDING --claim--> IN_REVIEW --release/lease expiry--> PENDING
PENDING|IN_REVIEW --make(APPROVED|REJECTED)--> APPROVED | REJECTED      (terminal)
PENDING|IN_REVIEW --escalate | SLA breach--> ESCALATED --admin make--> APPROVED | REJECTED
open --expires_at passed--> EXPIRED                                       (terminal)
```

Each function reads a decision as it is now and either returns the Transition to store or
raises the domain error a client sees; the store then applies it with one compare-and-set
on status and version, so a transition that raced with another writer never takes effect.
`now` is always the database's clock, read with the decision.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from hitl_grpc.domain import errors, validation
from hitl_grpc.domain.validation import Verdict
from hitl_grpc.domain.values import Decision, Principal, Resolution, Role, Status

OPEN: Final = frozenset({Status.PENDING, Status.IN_REVIEW, Status.ESCALATED})
TERMINAL: Final = frozenset({Status.APPROVED, Status.REJECTED, Status.EXPIRED})
VERDICTS: Final = frozenset({Status.APPROVED, Status.REJECTED})
# Where an analyst's work happens; ESCALATED is an admin's.
WORKABLE: Final = frozenset({Status.PENDING, Status.IN_REVIEW})

# Every edge of the diagram above; anything else is refused.
ALLOWED: Final[frozenset[tuple[Status, Status]]] = frozenset(
    {
        (Status.PENDING, Status.IN_REVIEW),
        (Status.IN_REVIEW, Status.IN_REVIEW),  # renewing a lease, or taking over a lapsed one
        (Status.IN_REVIEW, Status.PENDING),
        *((s, v) for s in WORKABLE for v in VERDICTS),
        *((s, Status.ESCALATED) for s in WORKABLE),
        *((Status.ESCALATED, v) for v in VERDICTS),
        *((s, Status.EXPIRED) for s in OPEN),
    }
)

SYSTEM_ACTOR: Final = "system"
SLA_REASON: Final = "SLA deadline passed without a verdict"


class AuditKind(enum.Enum):
    """The audit trail's name for each change; the values are stored and sent as they are."""

    SUBMIT = "decision.submit"
    CLAIM = "decision.claim"
    RELEASE = "decision.release"
    APPROVED = "decision.approved"
    REJECTED = "decision.rejected"
    ESCALATE = "decision.escalate"
    EXPIRE = "decision.expire"
    SLA_ESCALATE = "decision.sla_escalate"
    LEASE_EXPIRED = "decision.lease_expired"


@dataclass(frozen=True)
class Transition:
    """One step of the lifecycle: the decision to store, how it is audited, and whether it
    records a missed SLA."""

    decision: Decision
    kind: AuditKind
    sla_breached: bool = False


def is_allowed(before: Status, after: Status) -> bool:
    """Whether the diagram has this edge."""
    return (before, after) in ALLOWED


def lease_is_live(decision: Decision, now: datetime) -> bool:
    """Whether someone holds an unexpired review lease on the decision."""
    return (
        decision.status is Status.IN_REVIEW
        and bool(decision.claimed_by)
        and decision.claim_expires_at is not None
        and decision.claim_expires_at > now
    )


def has_expired(decision: Decision, now: datetime) -> bool:
    """Whether the decision is past its expires_at (the sweeper may not have run yet)."""
    expires_at = decision.analysis.expires_at
    return expires_at is not None and expires_at <= now


def check_version(decision: Decision, expected_version: int | None) -> None:
    """VersionConflict when the caller saw another version than the stored one."""
    if expected_version is not None and expected_version != decision.version:
        raise errors.VersionConflict(
            f"decision {decision.analysis_id} is at version {decision.version}, "
            f"not {expected_version}: re-read it and retry"
        )


# -- guards -----------------------------------------------------------------------------


def _check_not_terminal(decision: Decision) -> None:
    if decision.status in TERMINAL:
        raise errors.WrongState(
            f"decision {decision.analysis_id} is already {decision.status.name}"
        )


def _check_open(decision: Decision, now: datetime) -> None:
    _check_not_terminal(decision)
    if has_expired(decision, now):
        raise errors.WrongState(f"decision {decision.analysis_id} has expired")


def _check_not_claimed_by_other(decision: Decision, by: Principal, now: datetime) -> None:
    if by.role is Role.ADMIN or not lease_is_live(decision, now):
        return
    if decision.claimed_by != by.username:
        raise errors.WrongState(
            f"decision {decision.analysis_id} is claimed by {decision.claimed_by}"
        )


def _check_resolve(decision: Decision, to: Status, by: Principal, now: datetime) -> None:
    _check_open(decision, now)
    if decision.status is Status.ESCALATED:
        if to is Status.ESCALATED:
            raise errors.WrongState(f"decision {decision.analysis_id} is already ESCALATED")
        if by.role is not Role.ADMIN:
            raise errors.PermissionDenied(
                f"decision {decision.analysis_id} is escalated: only an admin may resolve it"
            )
    _check_not_claimed_by_other(decision, by, now)
    if not is_allowed(decision.status, to):
        raise errors.WrongState(
            f"decision {decision.analysis_id} cannot go from {decision.status.name} to {to.name}"
        )


def _check_due(decision: Decision, due: bool, what: str) -> None:
    # The sweeper's candidate queries select on these same conditions at this same `now`:
    # a refusal here means the caller asked for a change the decision is not due for.
    _check_not_terminal(decision)
    if not due:
        raise errors.WrongState(f"decision {decision.analysis_id} is not {what}")


# -- effects ----------------------------------------------------------------------------


def _next(
    current: Decision,
    now: datetime,
    status: Status,
    *,
    claimed_by: str = "",
    claim_expires_at: datetime | None = None,
) -> Decision:
    return dataclasses.replace(
        current,
        status=status,
        version=current.version + 1,
        updated_at=now,
        claimed_by=claimed_by,
        claim_expires_at=claim_expires_at,
    )


def _resolved(current: Decision, now: datetime, resolution: Resolution) -> Decision:
    # A resolved decision is nobody's to review any more: the claim goes with it.
    return dataclasses.replace(_next(current, now, resolution.status), resolution=resolution)


def _closed(
    current: Decision,
    now: datetime,
    kind: AuditKind,
    *,
    status: Status,
    decided_by: str,
    verdict: Verdict | None = None,
) -> Transition:
    earlier = current.resolution
    resolution = Resolution(
        status=status,
        approved_actions=verdict.approved_actions if verdict else (),
        notes=verdict.notes if verdict else "",
        # A verdict on an escalated item keeps why it was escalated.
        escalation_reason=earlier.escalation_reason if earlier else "",
        decided_by=decided_by,
        decided_at=now,
    )
    return Transition(_resolved(current, now, resolution), kind, now > current.sla_deadline)


def _escalated(current: Decision, now: datetime, reason: str, actor: str, notes: str) -> Decision:
    resolution = Resolution(
        status=Status.ESCALATED,
        notes=notes,
        escalation_reason=reason,
        decided_by=actor,
        decided_at=now,
    )
    return _resolved(current, now, resolution)


# -- the transitions ----------------------------------------------------------------------


def claim(decision: Decision, by: Principal, now: datetime, lease: timedelta) -> Transition:
    """Puts the decision under review by the caller, or renews the caller's lease."""
    _check_open(decision, now)
    if decision.status is Status.ESCALATED:
        raise errors.WrongState(
            f"decision {decision.analysis_id} is escalated: an admin resolves it directly"
        )
    if lease_is_live(decision, now) and decision.claimed_by != by.username:
        raise errors.WrongState(
            f"decision {decision.analysis_id} is claimed by {decision.claimed_by}"
        )
    after = _next(
        decision, now, Status.IN_REVIEW, claimed_by=by.username, claim_expires_at=now + lease
    )
    return Transition(after, AuditKind.CLAIM)


def release(decision: Decision, by: Principal, now: datetime) -> Transition:
    """Hands a claimed decision back to the queue."""
    _check_open(decision, now)
    if decision.status is not Status.IN_REVIEW:
        raise errors.WrongState(f"decision {decision.analysis_id} is not claimed")
    _check_not_claimed_by_other(decision, by, now)
    return Transition(_next(decision, now, Status.PENDING), AuditKind.RELEASE)


def decide(decision: Decision, verdict: Verdict, by: Principal, now: datetime) -> Transition:
    """The caller's verdict: approved (with actions drawn from the recommended), rejected, or
    escalated with its reason."""
    if verdict.status is Status.ESCALATED:
        return escalate(decision, verdict.escalation_reason, by, now, verdict.notes)
    assert verdict.status in VERDICTS, "validate_verdict admits verdicts and ESCALATED only"
    _check_resolve(decision, verdict.status, by, now)
    validation.check_drawn_from(verdict.approved_actions, decision.analysis.recommended_actions)
    kind = AuditKind.APPROVED if verdict.status is Status.APPROVED else AuditKind.REJECTED
    return _closed(
        decision, now, kind, status=verdict.status, decided_by=by.username, verdict=verdict
    )


def escalate(
    decision: Decision, reason: str, by: Principal, now: datetime, notes: str = ""
) -> Transition:
    """Hands the decision to an admin, with the caller's reason."""
    _check_resolve(decision, Status.ESCALATED, by, now)
    return Transition(_escalated(decision, now, reason, by.username, notes), AuditKind.ESCALATE)


def expire(decision: Decision, now: datetime) -> Transition:
    """Closes an open decision whose expires_at has passed."""
    _check_due(decision, has_expired(decision, now), "past its expires_at")
    return _closed(decision, now, AuditKind.EXPIRE, status=Status.EXPIRED, decided_by=SYSTEM_ACTOR)


def sla_escalate(decision: Decision, now: datetime) -> Transition:
    """Escalates a PENDING or IN_REVIEW decision whose SLA deadline has passed."""
    due = decision.status in WORKABLE and decision.sla_deadline <= now
    _check_due(decision, due, "overdue")
    after = _escalated(decision, now, SLA_REASON, SYSTEM_ACTOR, "")
    return Transition(after, AuditKind.SLA_ESCALATE, sla_breached=True)


def lease_lapsed(decision: Decision, now: datetime) -> Transition:
    """Returns a decision whose review lease ran out to the queue."""
    due = decision.status is Status.IN_REVIEW and not lease_is_live(decision, now)
    _check_due(decision, due, "under a lapsed lease")
    return Transition(_next(decision, now, Status.PENDING), AuditKind.LEASE_EXPIRED)
