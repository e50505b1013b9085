"""Proto <-> domain translation; the only place that knows both."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hitl.v1 import access_pb2, audit_pb2, auth_pb2, decision_pb2

from hitl_grpc.accounts.sessions import IssuedTokens, MfaChallengeIssued
from hitl_grpc.accounts.trail import PAGE_DEFAULT as AUDIT_PAGE_DEFAULT
from hitl_grpc.accounts.trail import PAGE_MAX as AUDIT_PAGE_MAX
from hitl_grpc.accounts.users import UserUpdate
from hitl_grpc.domain import opaque
from hitl_grpc.domain.decisions import BulkItem, BulkOutcome
from hitl_grpc.domain.errors import DomainError, FieldViolation, InvalidField
from hitl_grpc.domain.notifications import Delivery, DeliveryState
from hitl_grpc.domain.ports import AuditQuery
from hitl_grpc.domain.queue import QueueStats, WindowStats
from hitl_grpc.domain.validation import ActionDraft, AnalysisDraft, VerdictDraft
from hitl_grpc.domain.values import (
    Action,
    ActionVerdict,
    AnalysisId,
    AuditRecord,
    Decision,
    Priority,
    Resolution,
    Role,
    User,
)
from hitl_grpc.events.streams import ItemKind, PendingItem

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
# The largest id a 64-bit signed integer column holds.
_ID_MAX: Final = 2**63 - 1
_ID_DIGITS_MAX: Final = len(str(_ID_MAX))

# The responses that carry one decision and nothing else.
DecisionReply = TypeVar(
    "DecisionReply",
    decision_pb2.GetDecisionResponse,
    decision_pb2.ClaimDecisionResponse,
    decision_pb2.ReleaseDecisionResponse,
    decision_pb2.MakeDecisionResponse,
    decision_pb2.EscalateDecisionResponse,
)


def timestamp(value: datetime | None) -> Timestamp | None:
    """A Timestamp, or None to leave the field unset; exact to the microsecond."""
    if value is None:
        return None
    # Integer arithmetic on an aware datetime: several times cheaper than
    # Timestamp.FromDatetime, which matters at 50 decisions (7 times each) a page.
    seconds, micros = divmod((value - _EPOCH) // _MICROSECOND, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def from_timestamp(ts: Timestamp) -> datetime:
    """An aware UTC datetime."""
    return ts.ToDatetime(tzinfo=UTC)


def role_from_proto(value: int, field: str = "role") -> Role:
    """A role, or InvalidField for UNSPECIFIED and unknown numbers."""
    try:
        return Role(value)
    except ValueError:
        raise InvalidField.one(
            field, "must be ROLE_ADMIN, ROLE_ANALYST, ROLE_VIEWER or ROLE_SERVICE"
        ) from None


def role_to_proto(role: Role) -> access_pb2.Role.ValueType:
    """The wire enum value of a role."""
    return access_pb2.Role.ValueType(int(role))


def user_to_proto(user: User) -> auth_pb2.User:
    """A user's public profile."""
    return auth_pb2.User(
        id=user.id,
        username=user.username,
        role=role_to_proto(user.role),
        email=user.email,
        full_name=user.full_name,
        active=user.active,
        mfa_enabled=user.mfa_enabled,
        created_at=timestamp(user.created_at),
        certificate_subject=user.certificate_subject,
    )


def tokens_to_proto(tokens: IssuedTokens) -> auth_pb2.TokenPair:
    """A token pair."""
    return auth_pb2.TokenPair(
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
        access_expires_at=timestamp(tokens.access_expires_at),
        refresh_expires_at=timestamp(tokens.refresh_expires_at),
    )


def action_to_proto(action: Action) -> decision_pb2.Action:
    """An action."""
    return decision_pb2.Action(
        type=decision_pb2.ActionType.ValueType(int(action.type)),
        target=action.target,
        description=action.description,
    )


def resolution_to_proto(resolution: Resolution) -> decision_pb2.Resolution:
    """A verdict."""
    return decision_pb2.Resolution(
        status=decision_pb2.DecisionStatus.ValueType(int(resolution.status)),
        approved_actions=[action_to_proto(a) for a in resolution.approved_actions],
        notes=resolution.notes,
        escalation_reason=resolution.escalation_reason,
        decided_by=resolution.decided_by,
        decided_at=timestamp(resolution.decided_at),
    )


def decision_to_proto(decision: Decision) -> decision_pb2.Decision:
    """A decision with its state and resolution."""
    a = decision.analysis
    return decision_pb2.Decision(
        analysis_id=a.analysis_id,
        incident_id=a.incident_id,
        threat_level=a.threat_level,
        source_ip=a.source_ip,
        attributed_actor=a.attributed_actor,
        confidence=a.confidence,
        iocs=a.iocs,
        ttps=a.ttps,
        recommended_actions=[action_to_proto(x) for x in a.recommended_actions],
        forensic_summary=a.forensic_summary,
        priority=decision_pb2.Priority.ValueType(int(a.priority)),
        detected_at=timestamp(a.detected_at),
        expires_at=timestamp(a.expires_at),
        status=decision_pb2.DecisionStatus.ValueType(int(decision.status)),
        version=decision.version,
        created_at=timestamp(decision.created_at),
        updated_at=timestamp(decision.updated_at),
        sla_deadline=timestamp(decision.sla_deadline),
        claimed_by=decision.claimed_by,
        claim_expires_at=timestamp(decision.claim_expires_at),
        resolution=resolution_to_proto(decision.resolution) if decision.resolution else None,
        submitted_by=decision.submitted_by,
        lease_epoch=decision.lease_epoch,
        action_verdicts=action_verdicts_to_proto(decision),
    )


def action_verdicts_to_proto(decision: Decision) -> list[decision_pb2.ActionVerdict]:
    """Each action's verdict, pointing into recommended_actions rather than repeating it."""
    places: dict[tuple[int, str], int] = {}
    for i, action in enumerate(decision.analysis.recommended_actions):
        places.setdefault((int(action.type), action.target), i)
    return [
        action_verdict_to_proto(v, places.get((int(v.action.type), v.action.target), -1))
        for v in decision.action_verdicts
    ]


def action_verdict_to_proto(verdict: ActionVerdict, index: int) -> decision_pb2.ActionVerdict:
    """One action's verdict, with its hash and approvers."""
    return decision_pb2.ActionVerdict(
        recommended_index=index,
        type=decision_pb2.ActionType.ValueType(int(verdict.action.type)),
        action=action_to_proto(verdict.action) if index < 0 else None,
        action_hash=verdict.action_hash,
        status=decision_pb2.ActionVerdictStatus.ValueType(int(verdict.status)),
        required_approvals=verdict.required_approvals,
        approved_by=verdict.approved_by,
        rejected_by=verdict.rejected_by,
    )


def lease_to_proto(decision: Decision) -> decision_pb2.Lease | None:
    """The review lease a decision is under, or None when nobody holds one."""
    if not decision.lease_id:
        return None
    return decision_pb2.Lease(
        lease_id=decision.lease_id,
        epoch=decision.lease_epoch,
        expires_at=timestamp(decision.claim_expires_at),
    )


def claim_reply(decision: Decision) -> decision_pb2.ClaimDecisionResponse:
    """A claimed decision and the caller's lease."""
    return decision_pb2.ClaimDecisionResponse(
        decision=decision_to_proto(decision), lease=lease_to_proto(decision)
    )


def renew_reply(decision: Decision) -> decision_pb2.RenewLeaseResponse:
    """A decision whose lease was renewed, and the lease."""
    return decision_pb2.RenewLeaseResponse(
        decision=decision_to_proto(decision), lease=lease_to_proto(decision)
    )


def reassign_reply(decision: Decision) -> decision_pb2.ReassignDecisionResponse:
    """A reassigned decision and the assignee's lease."""
    return decision_pb2.ReassignDecisionResponse(
        decision=decision_to_proto(decision), lease=lease_to_proto(decision)
    )


def decision_reply(reply: type[DecisionReply], decision: Decision) -> DecisionReply:
    """A response of the kind that carries just the decision."""
    return reply(decision=decision_to_proto(decision))


def submit_reply(decision: Decision, created: bool) -> decision_pb2.SubmitDecisionResponse:
    """The decision a submit queued or found, and which of the two."""
    return decision_pb2.SubmitDecisionResponse(
        decision=decision_to_proto(decision), created=created
    )


def priority_from_proto(value: int, field: str = "priorities") -> Priority:
    """A priority, or InvalidField for UNSPECIFIED and unknown numbers."""
    try:
        return Priority(value)
    except ValueError:
        raise InvalidField.one(field, "must be PRIORITY_CRITICAL, _HIGH, _MEDIUM or _LOW") from None


def pending_item_reply(item: PendingItem) -> decision_pb2.WatchPendingResponse:
    """One WatchPending message."""
    if item.kind is ItemKind.ADDED:
        assert item.decision is not None
        return decision_pb2.WatchPendingResponse(
            cursor=item.cursor, added=decision_to_proto(item.decision)
        )
    if item.kind is ItemKind.UPDATED:
        assert item.decision is not None
        return decision_pb2.WatchPendingResponse(
            cursor=item.cursor, updated=decision_to_proto(item.decision)
        )
    reply = decision_pb2.WatchPendingResponse(cursor=item.cursor)
    if item.kind is ItemKind.REMOVED:
        assert item.decision is not None
        reply.removed.analysis_id = item.decision.analysis_id
        reply.removed.final_status = decision_pb2.DecisionStatus.ValueType(
            int(item.decision.status)
        )
    elif item.kind is ItemKind.SNAPSHOT_COMPLETE:
        reply.snapshot_complete.SetInParent()
    else:
        reply.heartbeat.sent_at.GetCurrentTime()
    return reply


def watch_decision_reply(decision: Decision, cursor: str) -> decision_pb2.WatchDecisionResponse:
    """One WatchDecision message: the decision as it is at `cursor`."""
    return decision_pb2.WatchDecisionResponse(cursor=cursor, decision=decision_to_proto(decision))


# -- decision requests and stats ---------------------------------------------------------


def _optional_time(message: Any, name: str, violations: list[FieldViolation]) -> datetime | None:
    """A set Timestamp field as a datetime; an unrepresentable one becomes a violation."""
    if not message.HasField(name):
        return None
    try:
        return from_timestamp(getattr(message, name))
    except (ValueError, OverflowError):
        violations.append(FieldViolation(name, "is not a representable time"))
        return None


def action_draft_from_proto(action: decision_pb2.Action) -> ActionDraft:
    """An action as received; validation.py judges it."""
    return ActionDraft(int(action.type), action.target, action.description)


def analysis_draft_from_proto(request: decision_pb2.SubmitDecisionRequest) -> AnalysisDraft:
    """A SubmitDecision request as received; validation.py judges it."""
    violations: list[FieldViolation] = []
    detected_at = _optional_time(request, "detected_at", violations)
    expires_at = _optional_time(request, "expires_at", violations)
    return AnalysisDraft(
        analysis_id=request.analysis_id,
        incident_id=request.incident_id,
        threat_level=request.threat_level,
        source_ip=request.source_ip,
        attributed_actor=request.attributed_actor,
        confidence=request.confidence,
        iocs=list(request.iocs),
        ttps=list(request.ttps),
        recommended_actions=[action_draft_from_proto(a) for a in request.recommended_actions],
        forensic_summary=request.forensic_summary,
        priority=int(request.priority),
        detected_at=detected_at,
        expires_at=expires_at,
        decode_violations=tuple(violations),
    )


def verdict_draft_from_proto(request: decision_pb2.MakeDecisionRequest) -> VerdictDraft:
    """A MakeDecision request as received."""
    return VerdictDraft(
        status=int(request.status),
        approved_actions=[action_draft_from_proto(a) for a in request.approved_actions],
        notes=request.notes,
        escalation_reason=request.escalation_reason,
    )


def bulk_items_from_proto(request: decision_pb2.MakeDecisionsRequest) -> list[BulkItem]:
    """A MakeDecisions request's items, each with the call's shared status and note.

    An id that is not even well-formed stays as sent: its item is refused on its own.
    """
    items = []
    for item in request.items:
        items.append(
            BulkItem(
                analysis_id=AnalysisId(item.analysis_id),
                draft=VerdictDraft(
                    status=int(request.status),
                    approved_actions=[action_draft_from_proto(a) for a in item.approved_actions],
                    notes=request.notes,
                    escalation_reason=request.escalation_reason,
                ),
                expected_version=(
                    int(item.expected_version) if item.HasField("expected_version") else None
                ),
                lease_epoch=int(item.lease_epoch) if item.HasField("lease_epoch") else None,
            )
        )
    return items


def bulk_reply(
    outcomes: list[BulkOutcome], code_of: Callable[[DomainError], int]
) -> decision_pb2.MakeDecisionsResponse:
    """One result per item, in the request's order."""
    results = []
    for outcome in outcomes:
        if outcome.error is not None:
            results.append(
                decision_pb2.MakeDecisionsResult(
                    analysis_id=outcome.analysis_id,
                    code=code_of(outcome.error),
                    message=outcome.error.message,
                )
            )
        else:
            assert outcome.decision is not None, "an outcome is a decision or an error"
            results.append(
                decision_pb2.MakeDecisionsResult(
                    analysis_id=outcome.analysis_id,
                    decision=decision_to_proto(outcome.decision),
                )
            )
    return decision_pb2.MakeDecisionsResponse(results=results)


def duration(value: timedelta | None) -> Duration | None:
    """A Duration, or None to leave the field unset."""
    if value is None:
        return None
    result = Duration()
    result.FromTimedelta(value)
    return result


def window_stats_to_proto(stats: WindowStats) -> decision_pb2.DecisionWindowStats:
    """One window of decision statistics."""
    return decision_pb2.DecisionWindowStats(
        submitted=stats.submitted,
        approved=stats.approved,
        rejected=stats.rejected,
        escalated=stats.escalated,
        expired=stats.expired,
        decided=stats.decided,
        avg_time_to_decision=duration(stats.avg_time_to_decision),
        p50_time_to_decision=duration(stats.p50_time_to_decision),
        p90_time_to_decision=duration(stats.p90_time_to_decision),
        sla_breaches=stats.sla_breaches,
    )


def stats_to_proto(stats: QueueStats) -> decision_pb2.GetDecisionStatsResponse:
    """The queue's statistics."""
    return decision_pb2.GetDecisionStatsResponse(
        pending_by_priority=[
            decision_pb2.PriorityCount(
                priority=decision_pb2.Priority.ValueType(int(p)), count=count
            )
            for p, count in sorted(stats.pending_by_priority.items())
        ],
        pending=stats.pending,
        in_review=stats.in_review,
        escalated=stats.escalated,
        last_24h=window_stats_to_proto(stats.last_24h),
        all_time=window_stats_to_proto(stats.all_time),
    )


# --- accounts and audit -------------------------------------------------------------------

USER_MASK_FIELDS: Final = frozenset(
    {"role", "active", "email", "full_name", "new_password", "certificate_subject"}
)


def mfa_challenge_to_proto(challenge: MfaChallengeIssued) -> auth_pb2.MfaChallenge:
    """The second step of an MFA sign-in."""
    return auth_pb2.MfaChallenge(
        challenge_token=challenge.challenge_token, expires_at=timestamp(challenge.expires_at)
    )


def login_to_proto(result: IssuedTokens | MfaChallengeIssued) -> auth_pb2.LoginResponse:
    """Tokens, or an MFA challenge: never both."""
    if isinstance(result, MfaChallengeIssued):
        return auth_pb2.LoginResponse(mfa_challenge=mfa_challenge_to_proto(result))
    return auth_pb2.LoginResponse(tokens=tokens_to_proto(result))


def page_token(kind: str, value: str) -> str:
    """An opaque cursor for the next page ('' when there is none)."""
    if not value:
        return ""
    return opaque.encode(f"{kind}:{value}".encode())


def from_page_token(token: str, kind: str) -> str | None:
    """The cursor inside a page token from page_token(kind, ...); None for the first page."""
    if not token:
        return None
    raw = opaque.decode_text(token) or ""
    prefix, sep, value = raw.partition(":")
    # U+0000 would reach PostgreSQL, whose text cannot hold it, as an error.
    if prefix != kind or not sep or not value or "\x00" in value:
        raise InvalidField.one("page_token", "is not a token this method returned")
    return value


def user_update_from_proto(request: auth_pb2.UpdateUserRequest) -> UserUpdate:
    """The fields an UpdateUser request's mask names, with their new values."""
    paths = list(request.update_mask.paths)
    unknown = sorted(set(paths) - USER_MASK_FIELDS)
    if unknown:
        raise InvalidField.one(
            "update_mask", f"unknown field(s) {', '.join(unknown)}; use {sorted(USER_MASK_FIELDS)}"
        )
    if not paths:
        raise InvalidField.one("update_mask", "must name at least one field")
    return UserUpdate(
        role=role_from_proto(request.role) if "role" in paths else None,
        active=request.active if "active" in paths else None,
        email=request.email if "email" in paths else None,
        full_name=request.full_name if "full_name" in paths else None,
        new_password=request.new_password if "new_password" in paths else None,
        certificate_subject=(
            request.certificate_subject if "certificate_subject" in paths else None
        ),
    )


def audit_query_from_proto(request: audit_pb2.ListAuditEventsRequest) -> AuditQuery:
    """Filters and page of a ListAuditEvents request."""
    problems: list[FieldViolation] = []
    if request.page_size < 0:
        problems.append(FieldViolation("page_size", "must not be negative"))
    for name in ("actor", "kind", "target"):
        if "\x00" in getattr(request, name):
            problems.append(FieldViolation(name, "must not contain NUL (U+0000)"))
    since = _optional_time(request, "since", problems)
    until = _optional_time(request, "until", problems)
    before_id = None
    try:
        before_id = _audit_cursor(request.page_token)
    except InvalidField as err:
        problems.extend(err.violations)
    if problems:
        raise InvalidField(problems)
    return AuditQuery(
        actor=request.actor,
        kind=request.kind,
        target=request.target,
        since=since,
        until=until,
        before_id=before_id,
        limit=min(request.page_size or AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX),
    )


def _audit_cursor(token: str) -> int | None:
    """The audit id a page token continues below; only ids this service can have issued."""
    return _numbered_token(token, "a", "page_token")


def _numbered_token(
    token: str, kind: str, field: str, refusal: str = "is not a token this method returned"
) -> int | None:
    """The positive 64-bit number inside a token of `kind`; None for an empty token."""
    try:
        number = from_page_token(token, kind)
    except InvalidField:
        raise InvalidField.one(field, refusal) from None
    if number is None:
        return None
    # isdigit() alone admits '²' and Arabic-Indic digits, which int() refuses; the length
    # bound keeps int() cheap and the id within a 64-bit column on both backends.
    if not (number.isascii() and number.isdigit() and len(number) <= _ID_DIGITS_MAX):
        raise InvalidField.one(field, refusal)
    value = int(number)
    if not 0 < value <= _ID_MAX:
        raise InvalidField.one(field, refusal)
    return value


EXPORT_CURSOR: Final = "x"


def export_cursor_from_proto(request: audit_pb2.ExportAuditEventsRequest) -> int:
    """The chain seq an export resumes after (0 from the start), or InvalidField."""
    refusal = "is not a cursor this method returned"
    return _numbered_token(request.resume_cursor, EXPORT_CURSOR, "resume_cursor", refusal) or 0


def audit_export_to_proto(record: AuditRecord) -> audit_pb2.ExportAuditEventsResponse:
    """One exported event: its JSON line, and the cursor that resumes after it."""
    line = {
        "id": record.id,
        "seq": record.seq,
        "time": record.time.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": record.actor,
        "kind": record.kind,
        "target": record.target,
        "peer": record.peer,
        "outcome": record.outcome.name,
        "details": record.details,
        "request_id": record.request_id,
        "digest": record.digest,
        "prev_hash": record.prev_hash,
        "hash": record.hash,
    }
    return audit_pb2.ExportAuditEventsResponse(
        json_line=json.dumps(line, ensure_ascii=False, separators=(",", ":")),
        cursor=page_token(EXPORT_CURSOR, str(record.seq)),
    )


def audit_event_to_proto(record: AuditRecord) -> audit_pb2.AuditEvent:
    """One audit event."""
    return audit_pb2.AuditEvent(
        id=record.id,
        time=timestamp(record.time),
        actor=record.actor,
        kind=record.kind,
        target=record.target,
        peer=record.peer,
        outcome=audit_pb2.AuditOutcome.ValueType(int(record.outcome)),
        details=record.details,
        request_id=record.request_id,
    )


WEBHOOK_PAGE_DEFAULT: Final = 100
WEBHOOK_PAGE_MAX: Final = 1000


def webhook_page_from_proto(
    request: audit_pb2.ListWebhookDeliveriesRequest,
) -> tuple[DeliveryState | None, int, int]:
    """The state filter, the id to continue after, and the page size of the request."""
    problems: list[FieldViolation] = []
    state: DeliveryState | None = None
    if request.state:
        try:
            state = DeliveryState(request.state)
        except ValueError:
            problems.append(FieldViolation("state", f"unknown state {request.state}"))
    if request.page_size < 0:
        problems.append(FieldViolation("page_size", "must not be negative"))
    after = 0
    try:
        after = _numbered_token(request.page_token, "w", "page_token") or 0
    except InvalidField as err:
        problems.extend(err.violations)
    if problems:
        raise InvalidField(problems)
    return state, after, min(request.page_size or WEBHOOK_PAGE_DEFAULT, WEBHOOK_PAGE_MAX)


def webhook_page_to_proto(
    deliveries: list[Delivery], more: bool
) -> audit_pb2.ListWebhookDeliveriesResponse:
    """One page of deliveries and the token of the next, if there is one."""
    return audit_pb2.ListWebhookDeliveriesResponse(
        deliveries=[
            audit_pb2.WebhookDelivery(
                id=d.id,
                idempotency_key=d.idempotency_key,
                url=d.url,
                event_type=d.event_type,
                state=audit_pb2.WebhookDeliveryState.ValueType(int(d.state)),
                attempts=d.attempts,
                next_attempt_at=timestamp(d.next_attempt_at),
                last_error=d.last_error,
                created_at=timestamp(d.created_at),
                delivered_at=timestamp(d.delivered_at),
                body=d.body,
            )
            for d in deliveries
        ],
        next_page_token=page_token("w", str(deliveries[-1].id)) if more and deliveries else "",
    )
