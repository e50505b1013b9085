"""The decision state machine: which state may move to which, and who may move it.

```
PENDING --claim--> IN_REVIEW --release/lease expiry--> PENDING
PENDING|IN_REVIEW --make(APPROVED|REJECTED)--> APPROVED | REJECTED      (terminal)
PENDING|IN_REVIEW --escalate | SLA breach--> ESCALATED --admin make--> APPROVED | REJECTED
open --expires_at passed--> EXPIRED                                       (terminal)
```

Each check here reads a decision as it is now and either returns or raises the domain
error a client sees; the store then applies the change with one compare-and-set on
status and version, so a check that raced with another writer can never take effect.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from hitl_grpc.domain import errors
from hitl_grpc.domain.values import Decision, Principal, Role, Status

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


def _check_open(decision: Decision, now: datetime) -> None:
    if decision.status in TERMINAL:
        raise errors.WrongState(
            f"decision {decision.analysis_id} is already {decision.status.name}"
        )
    if has_expired(decision, now):
        raise errors.WrongState(f"decision {decision.analysis_id} has expired")


def _check_not_claimed_by_other(decision: Decision, by: Principal, now: datetime) -> None:
    if by.role is Role.ADMIN or not lease_is_live(decision, now):
        return
    if decision.claimed_by != by.username:
        raise errors.WrongState(
            f"decision {decision.analysis_id} is claimed by {decision.claimed_by}"
        )


def check_claim(decision: Decision, by: Principal, now: datetime) -> None:
    """The caller may take (or renew) the review lease."""
    _check_open(decision, now)
    if decision.status is Status.ESCALATED:
        raise errors.WrongState(
            f"decision {decision.analysis_id} is escalated: an admin resolves it directly"
        )
    if lease_is_live(decision, now) and decision.claimed_by != by.username:
        raise errors.WrongState(
            f"decision {decision.analysis_id} is claimed by {decision.claimed_by}"
        )


def check_release(decision: Decision, by: Principal, now: datetime) -> None:
    """The caller may hand the decision back to the queue."""
    _check_open(decision, now)
    if decision.status is not Status.IN_REVIEW:
        raise errors.WrongState(f"decision {decision.analysis_id} is not claimed")
    _check_not_claimed_by_other(decision, by, now)


def check_resolve(decision: Decision, to: Status, by: Principal, now: datetime) -> None:
    """The caller may move the decision to a verdict or to ESCALATED."""
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
