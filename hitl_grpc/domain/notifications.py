"""Which decision changes are sent to webhooks, and what a notification says."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hitl_grpc.domain import lifecycle
from hitl_grpc.domain.values import Decision, Priority


class NotificationType(enum.Enum):
    """The webhook event types; the values are sent as they are."""

    CRITICAL_SUBMITTED = "decision.critical_submitted"
    SLA_BREACHED = "decision.sla_breached"
    VERDICT = "decision.verdict"


class DeliveryState(enum.IntEnum):
    """Where one webhook delivery stands; values are stored and equal the wire enum's."""

    PENDING = 1
    DELIVERED = 2
    DEAD = 3


@dataclass(frozen=True)
class Delivery:
    """One notification to one receiver, as stored."""

    id: int
    idempotency_key: str
    url: str
    event_type: str
    body: str
    state: DeliveryState
    attempts: int
    next_attempt_at: datetime
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
    claim_token: str


def notification_for(kind: lifecycle.AuditKind, after: Decision) -> NotificationType | None:
    """The webhook event a change is, if any: a new CRITICAL item, an SLA breach, a verdict."""
    if kind is lifecycle.AuditKind.SUBMIT and after.analysis.priority is Priority.CRITICAL:
        return NotificationType.CRITICAL_SUBMITTED
    if kind is lifecycle.AuditKind.SLA_ESCALATE:
        return NotificationType.SLA_BREACHED
    if kind in (lifecycle.AuditKind.APPROVED, lifecycle.AuditKind.REJECTED):
        return NotificationType.VERDICT
    return None


def _time(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def notification_body(
    notification: NotificationType, decision: Decision, *, at: datetime
) -> dict[str, Any]:
    """What a receiver is told: the event and the decision as it now stands."""
    resolution = decision.resolution
    return {
        "type": notification.value,
        "occurred_at": _time(at),
        "decision": {
            "analysis_id": decision.analysis_id,
            "incident_id": decision.analysis.incident_id,
            "threat_level": decision.analysis.threat_level,
            "priority": decision.analysis.priority.name,
            "status": decision.status.name,
            "version": decision.version,
            "sla_deadline": _time(decision.sla_deadline),
            "decided_by": resolution.decided_by if resolution else "",
            "approved_actions": [
                {"type": a.type.name, "target": a.target}
                for a in (resolution.approved_actions if resolution else ())
            ],
        },
    }
