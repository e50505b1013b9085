"""Row mapping shared by the repositories: decisions, times, and text PostgreSQL can hold."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from hitl_grpc.domain.values import (
    Action,
    ActionType,
    ActionVerdict,
    ActionVerdictStatus,
    Analysis,
    AnalysisId,
    Decision,
    Priority,
    Resolution,
    Status,
)

NUL: Final = "\x00"


def storable(text: str) -> str:
    """Text both backends can hold: PostgreSQL text refuses U+0000, so it becomes U+FFFD."""
    return text.replace(NUL, "\ufffd") if NUL in text else text


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: they were stored as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _must(value: datetime | None) -> datetime:
    result = aware(value)
    assert result is not None, "a NOT NULL time column was NULL"
    return result


def actions_to_json(actions: tuple[Action, ...]) -> list[dict[str, Any]]:
    """Actions as JSON-able dicts."""
    return [
        {"type": int(a.type), "target": a.target, "description": a.description} for a in actions
    ]


def actions_from_json(raw: list[dict[str, Any]] | None) -> tuple[Action, ...]:
    """Actions back from their JSON form."""
    return tuple(
        Action(ActionType(a["type"]), a.get("target", ""), a.get("description", ""))
        for a in raw or ()
    )


def verdicts_to_json(verdicts: tuple[ActionVerdict, ...]) -> list[dict[str, Any]]:
    """Per-action verdicts as JSON-able dicts."""
    return [
        {
            "action": actions_to_json((v.action,))[0],
            "hash": v.action_hash,
            "required": v.required_approvals,
            "status": int(v.status),
            "approved_by": list(v.approved_by),
            "rejected_by": v.rejected_by,
        }
        for v in verdicts
    ]


def verdicts_from_json(raw: list[dict[str, Any]] | None) -> tuple[ActionVerdict, ...]:
    """Per-action verdicts back from their JSON form; none for rows from before them."""
    return tuple(
        ActionVerdict(
            action=actions_from_json([v["action"]])[0],
            action_hash=v["hash"],
            required_approvals=int(v["required"]),
            status=ActionVerdictStatus(v["status"]),
            approved_by=tuple(v.get("approved_by", ())),
            rejected_by=v.get("rejected_by", ""),
        )
        for v in raw or ()
    )


def analysis_to_row(a: Analysis) -> dict[str, Any]:
    """The columns of the decisions table that hold the submitted analysis."""
    return {
        "analysis_id": a.analysis_id,
        "incident_id": a.incident_id,
        "threat_level": a.threat_level,
        "source_ip": a.source_ip,
        "attributed_actor": a.attributed_actor,
        "confidence": a.confidence,
        "iocs": list(a.iocs),
        "ttps": list(a.ttps),
        "recommended_actions": actions_to_json(a.recommended_actions),
        "forensic_summary": a.forensic_summary,
        "priority": int(a.priority),
        "detected_at": a.detected_at,
        "expires_at": a.expires_at,
    }


def decision_to_row(d: Decision) -> dict[str, Any]:
    """Every column of the decisions table but payload_hash."""
    r = d.resolution
    return {
        **analysis_to_row(d.analysis),
        "submitted_by": d.submitted_by,
        "status": int(d.status),
        "version": d.version,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "sla_deadline": d.sla_deadline,
        "claimed_by": d.claimed_by or None,
        "claim_expires_at": d.claim_expires_at,
        "resolution_status": int(r.status) if r else None,
        "approved_actions": actions_to_json(r.approved_actions) if r else None,
        "notes": r.notes if r else None,
        "escalation_reason": r.escalation_reason if r else None,
        "decided_by": r.decided_by if r else None,
        "decided_at": r.decided_at if r else None,
        "lease_id": d.lease_id or None,
        "lease_epoch": d.lease_epoch,
        "action_verdicts": verdicts_to_json(d.action_verdicts) if d.action_verdicts else None,
    }


def decision_from_row(row: Mapping[str, Any]) -> Decision:
    """A decision from a decisions row (or an outbox payload decoded by payload_to_row)."""
    resolution = None
    if row["resolution_status"] is not None:
        resolution = Resolution(
            status=Status(row["resolution_status"]),
            approved_actions=actions_from_json(row["approved_actions"]),
            notes=row["notes"] or "",
            escalation_reason=row["escalation_reason"] or "",
            decided_by=row["decided_by"] or "",
            decided_at=aware(row["decided_at"]),
        )
    return Decision(
        analysis=Analysis(
            analysis_id=AnalysisId(row["analysis_id"]),
            incident_id=row["incident_id"],
            threat_level=row["threat_level"],
            source_ip=row["source_ip"],
            attributed_actor=row["attributed_actor"],
            confidence=row["confidence"],
            iocs=tuple(row["iocs"]),
            ttps=tuple(row["ttps"]),
            recommended_actions=actions_from_json(row["recommended_actions"]),
            forensic_summary=row["forensic_summary"],
            priority=Priority(row["priority"]),
            detected_at=_must(row["detected_at"]),
            expires_at=aware(row["expires_at"]),
        ),
        status=Status(row["status"]),
        version=row["version"],
        created_at=_must(row["created_at"]),
        updated_at=_must(row["updated_at"]),
        sla_deadline=_must(row["sla_deadline"]),
        submitted_by=row["submitted_by"],
        claimed_by=row["claimed_by"] or "",
        claim_expires_at=aware(row["claim_expires_at"]),
        resolution=resolution,
        # .get: outbox payloads written before these columns existed lack them.
        lease_id=row.get("lease_id") or "",
        lease_epoch=int(row.get("lease_epoch") or 0),
        action_verdicts=verdicts_from_json(row.get("action_verdicts")),
    )


_TIME_COLUMNS = (
    "detected_at",
    "expires_at",
    "created_at",
    "updated_at",
    "sla_deadline",
    "claim_expires_at",
    "decided_at",
)


def row_to_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as JSON for the outbox: times as ISO 8601 strings."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def payload_to_row(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of row_to_payload."""
    row = dict(payload)
    for name in _TIME_COLUMNS:
        if row.get(name) is not None:
            row[name] = datetime.fromisoformat(row[name])
    return row
