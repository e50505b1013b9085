"""Proto <-> domain translation; the only place that knows both."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from hitl.v1 import access_pb2, auth_pb2, decision_pb2

from hitl_grpc.auth.accounts import IssuedTokens
from hitl_grpc.domain.errors import InvalidField
from hitl_grpc.domain.values import Action, Decision, Resolution, Role, User


def timestamp(value: datetime | None) -> Timestamp | None:
    """A Timestamp, or None to leave the field unset."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


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
    )
