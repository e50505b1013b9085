"""The decision state machine: every transition, its guard and its effect, as pure functions.

```
PENDING --claim--> IN_REVIEW --release/lease expiry--> PENDING
IN_REVIEW --renew | reassign--> IN_REVIEW
PENDING|IN_REVIEW --make(APPROVED|REJECTED)--> APPROVED | REJECTED      (terminal)
PENDING|IN_REVIEW --make(APPROVED), an action still short of approvers--> PENDING
PENDING|IN_REVIEW --escalate | SLA breach--> ESCALATED --admin make--> APPROVED | REJECTED
open --expires_at passed--> EXPIRED                                       (terminal)
```

A verdict judges each action on its own (values.ActionVerdict): an approved action that
needs more approvers than it has (the two-person rule, ApprovalRules) stays PENDING and
the decision goes back to the queue for the next approver; the decision closes once no
action is pending. Every claim draws a new lease epoch; a verdict that names an epoch is
refused unless that lease is still live and the caller's (fencing).

Each function reads a decision as it is now and either returns the Transition to store or
raises the domain error a client sees; the store then applies it with one compare-and-set
on status and version, so a transition that raced with another writer never takes effect.
`now` is always the database's clock, read with the decision.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from hitl_grpc.domain import errors, validation
from hitl_grpc.domain.validation import Verdict
from hitl_grpc.domain.values import (
    Action,
    ActionType,
    ActionVerdict,
    ActionVerdictStatus,
    Analysis,
    Decision,
    Principal,
    Resolution,
    Role,
    Status,
)

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
        # An approval that leaves an action short of its approvers: back to the queue
        # (or, escalated, to the admins) for the next approver.
        (Status.PENDING, Status.PENDING),
        (Status.ESCALATED, Status.ESCALATED),
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
    LEASE_RENEW = "decision.lease_renew"
    APPROVAL = "decision.approval"
    REASSIGN = "decision.reassign"


@dataclass(frozen=True)
class Transition:
    """One step of the lifecycle: the decision to store, how it is audited, and whether it
    records a missed SLA."""

    decision: Decision
    kind: AuditKind
    sla_breached: bool = False
    # What the audit row says besides from, to and version.
    details: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class ApprovalRules:
    """How many distinct approvers each action type needs (the two-person rule)."""

    required: Mapping[ActionType, int] = dataclasses.field(default_factory=dict)

    def required_for(self, action_type: ActionType) -> int:
        """Approvers an action of this type needs: 1 unless configured otherwise."""
        return max(1, self.required.get(action_type, 1))


def initial_verdicts(analysis: Analysis, rules: ApprovalRules) -> tuple[ActionVerdict, ...]:
    """One PENDING verdict per distinct recommended action, as a decision starts out."""
    seen: set[tuple[ActionType, str]] = set()
    verdicts = []
    for action in analysis.recommended_actions:
        key = (action.type, action.target)
        if key not in seen:
            seen.add(key)
            verdicts.append(_pending_verdict(action, rules))
    return tuple(verdicts)


def _pending_verdict(action: Action, rules: ApprovalRules) -> ActionVerdict:
    return ActionVerdict(
        action=action,
        action_hash=validation.action_hash(action),
        required_approvals=rules.required_for(action.type),
    )


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


def check_lease(decision: Decision, epoch: int | None, by: Principal, now: datetime) -> None:
    """WrongState unless the caller's lease of this epoch is still live (no epoch: no check).

    This is the fence: a verdict prepared under a lease that lapsed, or that someone else
    has since claimed, must not land however late it arrives.
    """
    if epoch is None:
        return
    name = decision.analysis_id
    if epoch != decision.lease_epoch:
        holder = f", claimed by {decision.claimed_by}" if lease_is_live(decision, now) else ""
        raise errors.WrongState(
            f"lease epoch {epoch} on decision {name} is stale: it is at lease epoch "
            f"{decision.lease_epoch}{holder}; claim it again"
        )
    if not lease_is_live(decision, now):
        raise errors.WrongState(
            f"the lease (epoch {epoch}) on decision {name} has lapsed; claim it again"
        )
    if decision.claimed_by != by.username:
        raise errors.WrongState(
            f"the lease (epoch {epoch}) on decision {name} is held by {decision.claimed_by}"
        )


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
    lease_id: str = "",
    lease_epoch: int | None = None,
) -> Decision:
    # The epoch only ever grows: a fence the next claim must get past.
    return dataclasses.replace(
        current,
        status=status,
        version=current.version + 1,
        updated_at=now,
        claimed_by=claimed_by,
        claim_expires_at=claim_expires_at,
        lease_id=lease_id,
        lease_epoch=current.lease_epoch if lease_epoch is None else lease_epoch,
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


def _leased(
    decision: Decision, now: datetime, holder: str, lease: timedelta, lease_id: str
) -> Decision:
    """Under review by `holder` on a new lease: the next epoch."""
    return _next(
        decision,
        now,
        Status.IN_REVIEW,
        claimed_by=holder,
        claim_expires_at=now + lease,
        lease_id=lease_id,
        lease_epoch=decision.lease_epoch + 1,
    )


def _renewed(decision: Decision, now: datetime, lease: timedelta) -> Decision:
    """The same lease (id and epoch), running until now + lease."""
    return _next(
        decision,
        now,
        Status.IN_REVIEW,
        claimed_by=decision.claimed_by,
        claim_expires_at=now + lease,
        lease_id=decision.lease_id,
    )


def claim(
    decision: Decision, by: Principal, now: datetime, lease: timedelta, lease_id: str = ""
) -> Transition:
    """Puts the decision under review by the caller on a new lease (`lease_id`, the next
    epoch), or renews the caller's live lease, keeping its id and epoch."""
    _check_open(decision, now)
    if decision.status is Status.ESCALATED:
        raise errors.WrongState(
            f"decision {decision.analysis_id} is escalated: an admin resolves it directly"
        )
    if lease_is_live(decision, now):
        if decision.claimed_by != by.username:
            raise errors.WrongState(
                f"decision {decision.analysis_id} is claimed by {decision.claimed_by}"
            )
        return Transition(_renewed(decision, now, lease), AuditKind.CLAIM)
    return Transition(_leased(decision, now, by.username, lease, lease_id), AuditKind.CLAIM)


def renew(
    decision: Decision, by: Principal, now: datetime, lease: timedelta, epoch: int
) -> Transition:
    """Extends the caller's live lease of this epoch; a lapsed one must be claimed again."""
    _check_open(decision, now)
    check_lease(decision, epoch, by, now)
    return Transition(
        _renewed(decision, now, lease), AuditKind.LEASE_RENEW, details={"epoch": str(epoch)}
    )


def reassign(
    decision: Decision,
    by: Principal,
    to: str,
    now: datetime,
    lease: timedelta,
    lease_id: str,
) -> Transition:
    """Hands the item to another analyst on a new lease; the claimer or an admin may.

    An admin may also assign an unclaimed PENDING item. The old holder's epoch is fenced
    off: their verdicts that name it are refused from now on.
    """
    _check_open(decision, now)
    name = decision.analysis_id
    if decision.status is Status.ESCALATED:
        raise errors.WrongState(f"decision {name} is escalated: an admin resolves it directly")
    live = lease_is_live(decision, now)
    if by.role is not Role.ADMIN and (not live or decision.claimed_by != by.username):
        raise errors.PermissionDenied(
            f"only the claimer of decision {name} or an admin may reassign it"
        )
    if live and decision.claimed_by == to:
        raise errors.WrongState(f"decision {name} is already claimed by {to}")
    previous = decision.claimed_by if live else ""
    return Transition(
        _leased(decision, now, to, lease, lease_id),
        AuditKind.REASSIGN,
        details={"from_claimer": previous, "to_claimer": to},
    )


def release(
    decision: Decision, by: Principal, now: datetime, lease_epoch: int | None = None
) -> Transition:
    """Hands a claimed decision back to the queue."""
    _check_open(decision, now)
    if decision.status is not Status.IN_REVIEW:
        raise errors.WrongState(f"decision {decision.analysis_id} is not claimed")
    check_lease(decision, lease_epoch, by, now)
    _check_not_claimed_by_other(decision, by, now)
    return Transition(_next(decision, now, Status.PENDING), AuditKind.RELEASE)


def _vote(
    verdicts: tuple[ActionVerdict, ...],
    approved: tuple[Action, ...],
    decision: Decision,
    by: Principal,
    rules: ApprovalRules,
) -> tuple[ActionVerdict, ...]:
    """The caller's approval of each listed action and rejection of each unlisted pending one."""
    listed = {(a.type, a.target) for a in approved}
    known = {(v.action.type, v.action.target) for v in verdicts}
    # CUSTOM actions the caller adds join the list, to be judged like the others.
    extra = []
    for action in approved:
        key = (action.type, action.target)
        if key not in known:
            known.add(key)
            extra.append(_pending_verdict(action, rules))
    after = []
    for v in (*verdicts, *extra):
        key = (v.action.type, v.action.target)
        if v.status is not ActionVerdictStatus.PENDING:
            after.append(v)  # settled by earlier approvers
            continue
        if key not in listed:
            after.append(
                dataclasses.replace(v, status=ActionVerdictStatus.REJECTED, rejected_by=by.username)
            )
            continue
        what = f"ACTION_TYPE_{v.action.type.name} on decision {decision.analysis_id}"
        if v.required_approvals > 1 and by.username == decision.submitted_by:
            raise errors.PermissionDenied(
                f"{by.username} submitted decision {decision.analysis_id} and may not approve "
                f"ACTION_TYPE_{v.action.type.name}: it needs {v.required_approvals} approvers "
                "other than the submitter"
            )
        if by.username in v.approved_by:
            raise errors.WrongState(
                f"{by.username} has already approved {what}: it needs "
                f"{v.required_approvals} distinct approvers, another must approve it"
            )
        approvers = (*v.approved_by, by.username)
        done = len(approvers) >= v.required_approvals
        after.append(
            dataclasses.replace(
                v,
                approved_by=approvers,
                status=ActionVerdictStatus.APPROVED if done else ActionVerdictStatus.PENDING,
            )
        )
    return tuple(after)


def _all_rejected(verdicts: tuple[ActionVerdict, ...], by: str) -> tuple[ActionVerdict, ...]:
    # A rejected decision executes nothing: every action, approved so far or not, is
    # rejected with it (its approvers stay on record).
    return tuple(
        v
        if v.status is ActionVerdictStatus.REJECTED
        else dataclasses.replace(v, status=ActionVerdictStatus.REJECTED, rejected_by=by)
        for v in verdicts
    )


def current_verdicts(decision: Decision, rules: ApprovalRules) -> tuple[ActionVerdict, ...]:
    """The per-action verdicts as stored, or as they start out for a decision that has none."""
    return decision.action_verdicts or initial_verdicts(decision.analysis, rules)


def decide(
    decision: Decision,
    verdict: Verdict,
    by: Principal,
    now: datetime,
    rules: ApprovalRules | None = None,
    lease_epoch: int | None = None,
) -> Transition:
    """The caller's verdict: approved (with actions drawn from the recommended), rejected, or
    escalated with its reason.

    An approval approves each listed action and rejects each pending one it leaves out;
    while an action still needs approvers the decision returns to the queue (PENDING, or
    stays ESCALATED) and closes only once every action is settled.
    """
    if verdict.status is Status.ESCALATED:
        return escalate(decision, verdict.escalation_reason, by, now, verdict.notes, lease_epoch)
    assert verdict.status in VERDICTS, "validate_verdict admits verdicts and ESCALATED only"
    rules = rules or ApprovalRules()
    # The fence first: a stale epoch is the clearest thing to tell its holder.
    _check_open(decision, now)
    check_lease(decision, lease_epoch, by, now)
    _check_resolve(decision, verdict.status, by, now)
    validation.check_drawn_from(verdict.approved_actions, decision.analysis.recommended_actions)
    before = current_verdicts(decision, rules)
    if verdict.status is Status.REJECTED:
        judged = dataclasses.replace(decision, action_verdicts=_all_rejected(before, by.username))
        return _closed(
            judged,
            now,
            AuditKind.REJECTED,
            status=Status.REJECTED,
            decided_by=by.username,
            verdict=verdict,
        )
    after = _vote(before, verdict.approved_actions, decision, by, rules)
    judged = dataclasses.replace(decision, action_verdicts=after)
    details = {
        "approved": ",".join(
            f"ACTION_TYPE_{a.type.name}:{validation.action_hash(a)}"
            for a in verdict.approved_actions
        )
    }
    if any(v.status is ActionVerdictStatus.PENDING for v in after):
        # Back to the queue for the next approver: the caller's claim ends here.
        waiting = Status.ESCALATED if decision.status is Status.ESCALATED else Status.PENDING
        return Transition(_next(judged, now, waiting), AuditKind.APPROVAL, details=details)
    final = verdict
    if any(v.approved_by for v in before):
        # Approvals gathered over several calls: what was approved, in the list's order.
        approved = tuple(v.action for v in after if v.status is ActionVerdictStatus.APPROVED)
        final = dataclasses.replace(verdict, approved_actions=approved)
    closed = _closed(
        judged,
        now,
        AuditKind.APPROVED,
        status=Status.APPROVED,
        decided_by=by.username,
        verdict=final,
    )
    return dataclasses.replace(closed, details=details)


def escalate(
    decision: Decision,
    reason: str,
    by: Principal,
    now: datetime,
    notes: str = "",
    lease_epoch: int | None = None,
) -> Transition:
    """Hands the decision to an admin, with the caller's reason."""
    _check_open(decision, now)
    check_lease(decision, lease_epoch, by, now)
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
