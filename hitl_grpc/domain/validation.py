"""Request validation for decisions: every bad field is reported at once, with the limits here.

Strings are stored byte-exact (no trimming, no normalization): SQL, HTML, right-to-left
marks and emoji all come back as sent. The one exception is U+0000: PostgreSQL text
cannot hold it, so it is refused on both backends rather than stored on one only.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from hitl_grpc.domain.errors import FieldViolation, InvalidField
from hitl_grpc.domain.values import (
    Action,
    ActionType,
    Analysis,
    AnalysisId,
    Priority,
    Status,
)

ID_MAX: Final = 128
THREAT_LEVEL_MAX: Final = 64
SOURCE_IP_MAX: Final = 64
ACTOR_MAX: Final = 1_000
SUMMARY_MAX: Final = 10_000
IOCS_MAX: Final = 200
IOC_MAX: Final = 500
TTPS_MAX: Final = 20
TTP_MAX: Final = 64
ACTIONS_MAX: Final = 50
ACTION_TARGET_MAX: Final = 500
ACTION_DESCRIPTION_MAX: Final = 2_000
NOTES_MAX: Final = 10_000
REASON_MAX: Final = 2_000
CONFIDENCE_MIN: Final = 0.0
CONFIDENCE_MAX: Final = 100.0


@dataclass(frozen=True)
class ActionDraft:
    """An action as received: the enum still a bare number."""

    type: int
    target: str = ""
    description: str = ""


@dataclass(frozen=True)
class AnalysisDraft:
    """A SubmitDecision request as received, before any rule is applied."""

    analysis_id: str
    incident_id: str
    threat_level: str
    source_ip: str
    attributed_actor: str
    confidence: float
    iocs: Sequence[str]
    ttps: Sequence[str]
    recommended_actions: Sequence[ActionDraft]
    forensic_summary: str
    priority: int
    detected_at: datetime | None
    expires_at: datetime | None
    # Violations found while decoding the wire form (an out-of-range timestamp).
    decode_violations: Sequence[FieldViolation] = field(default_factory=tuple)


@dataclass(frozen=True)
class VerdictDraft:
    """A MakeDecision request as received."""

    status: int
    approved_actions: Sequence[ActionDraft]
    notes: str
    escalation_reason: str


@dataclass(frozen=True)
class Verdict:
    """A validated MakeDecision request."""

    status: Status
    approved_actions: tuple[Action, ...]
    notes: str
    escalation_reason: str


class _Violations:
    def __init__(self, initial: Sequence[FieldViolation] = ()) -> None:
        self.items: list[FieldViolation] = list(initial)

    def add(self, field_name: str, description: str) -> None:
        self.items.append(FieldViolation(field_name, description))

    def text(self, field_name: str, value: str, *, maximum: int, required: bool = False) -> None:
        if required and not value:
            self.add(field_name, "must not be empty")
        elif len(value) > maximum:
            self.add(field_name, f"must be at most {maximum} characters, got {len(value)}")
        if "\x00" in value:
            self.add(field_name, "must not contain NUL (U+0000)")

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidField(self.items)


def _id_problem(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > ID_MAX:
        return f"must be at most {ID_MAX} characters, got {len(value)}"
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        return "must not contain control characters"
    return None


def parse_analysis_id(raw: str, field_name: str = "analysis_id") -> AnalysisId:
    """An analysis id: 1-128 characters, no control characters; otherwise InvalidField."""
    problem = _id_problem(raw)
    if problem:
        raise InvalidField.one(field_name, problem)
    return AnalysisId(raw)


def _actions(
    v: _Violations, field_name: str, drafts: Sequence[ActionDraft], maximum: int
) -> tuple[Action, ...]:
    if len(drafts) > maximum:
        v.add(field_name, f"must have at most {maximum} actions, got {len(drafts)}")
    actions = []
    for i, draft in enumerate(drafts):
        name = f"{field_name}[{i}]"
        try:
            kind = ActionType(draft.type)
        except ValueError:
            v.add(f"{name}.type", "must be a known ACTION_TYPE_*, not UNSPECIFIED")
            continue
        v.text(f"{name}.target", draft.target, maximum=ACTION_TARGET_MAX)
        v.text(f"{name}.description", draft.description, maximum=ACTION_DESCRIPTION_MAX)
        if kind is ActionType.CUSTOM and not draft.description:
            v.add(f"{name}.description", "must describe a CUSTOM action")
        actions.append(Action(kind, draft.target, draft.description))
    return tuple(actions)


def _strings(
    v: _Violations, field_name: str, values: Sequence[str], *, count: int, each: int
) -> tuple[str, ...]:
    if len(values) > count:
        v.add(field_name, f"must have at most {count} items, got {len(values)}")
    for i, value in enumerate(values):
        v.text(f"{field_name}[{i}]", value, maximum=each, required=True)
    return tuple(values)


def validate_analysis(draft: AnalysisDraft) -> Analysis:
    """The analysis, or InvalidField listing every bad field but a past expires_at.

    Whether expires_at is in the future is judged on the database's clock when the
    decision is stored (see `expiry_violation`), not on this replica's.
    """
    v = _Violations(draft.decode_violations)
    id_problem = _id_problem(draft.analysis_id)
    if id_problem:
        v.add("analysis_id", id_problem)
    v.text("incident_id", draft.incident_id, maximum=ID_MAX, required=True)
    v.text("threat_level", draft.threat_level, maximum=THREAT_LEVEL_MAX, required=True)
    if not draft.source_ip:
        v.add("source_ip", "must not be empty")
    elif len(draft.source_ip) > SOURCE_IP_MAX:
        v.add("source_ip", f"must be at most {SOURCE_IP_MAX} characters")
    else:
        try:
            ipaddress.ip_address(draft.source_ip)
        except ValueError:
            v.add("source_ip", "must be an IPv4 or IPv6 address")
    v.text("attributed_actor", draft.attributed_actor, maximum=ACTOR_MAX)
    if not (
        math.isfinite(draft.confidence) and CONFIDENCE_MIN <= draft.confidence <= CONFIDENCE_MAX
    ):
        v.add("confidence", f"must be between {CONFIDENCE_MIN:g} and {CONFIDENCE_MAX:g}")
    iocs = _strings(v, "iocs", draft.iocs, count=IOCS_MAX, each=IOC_MAX)
    ttps = _strings(v, "ttps", draft.ttps, count=TTPS_MAX, each=TTP_MAX)
    actions = _actions(v, "recommended_actions", draft.recommended_actions, ACTIONS_MAX)
    v.text("forensic_summary", draft.forensic_summary, maximum=SUMMARY_MAX)
    priority: Priority | None = None
    try:
        priority = Priority(draft.priority)
    except ValueError:
        v.add("priority", "must be PRIORITY_CRITICAL, _HIGH, _MEDIUM or _LOW")
    if draft.detected_at is None and not any(
        x.field == "detected_at" for x in draft.decode_violations
    ):
        v.add("detected_at", "is required")
    v.raise_if_any()
    assert priority is not None and draft.detected_at is not None
    return Analysis(
        analysis_id=AnalysisId(draft.analysis_id),
        incident_id=draft.incident_id,
        threat_level=draft.threat_level,
        source_ip=draft.source_ip,
        attributed_actor=draft.attributed_actor,
        confidence=draft.confidence,
        iocs=iocs,
        ttps=ttps,
        recommended_actions=actions,
        forensic_summary=draft.forensic_summary,
        priority=priority,
        detected_at=draft.detected_at.astimezone(UTC),
        expires_at=draft.expires_at.astimezone(UTC) if draft.expires_at else None,
    )


def expiry_violation(expires_at: datetime | None, now: datetime) -> FieldViolation | None:
    """Why expires_at is refused at `now` (the database's time), if it is."""
    if expires_at is not None and expires_at <= now:
        return FieldViolation("expires_at", "must be in the future")
    return None


def validate_verdict(draft: VerdictDraft) -> Verdict:
    """The verdict's own fields; which actions may be approved is checked against the decision."""
    v = _Violations()
    status = Status(draft.status) if draft.status in Status.__members__.values() else None
    if status not in (Status.APPROVED, Status.REJECTED, Status.ESCALATED):
        v.add("status", "must be DECISION_STATUS_APPROVED, _REJECTED or _ESCALATED")
    actions = _actions(v, "approved_actions", draft.approved_actions, ACTIONS_MAX)
    v.text("notes", draft.notes, maximum=NOTES_MAX)
    v.text(
        "escalation_reason",
        draft.escalation_reason,
        maximum=REASON_MAX,
        required=status is Status.ESCALATED,
    )
    if status in (Status.REJECTED, Status.ESCALATED) and draft.approved_actions:
        v.add("approved_actions", f"must be empty when the status is {status.name}")
    v.raise_if_any()
    assert status is not None
    return Verdict(status, actions, draft.notes, draft.escalation_reason)


def check_drawn_from(actions: Sequence[Action], recommended: Sequence[Action]) -> None:
    """InvalidField unless every approved action repeats a recommended one or is CUSTOM."""
    v = _Violations()
    offered = {(a.type, a.target) for a in recommended}
    for i, action in enumerate(actions):
        if action.type is not ActionType.CUSTOM and (action.type, action.target) not in offered:
            v.add(
                f"approved_actions[{i}]",
                "must be one of the recommended actions (same type and target) or CUSTOM",
            )
    v.raise_if_any()


def validate_reason(reason: str, field_name: str = "reason") -> str:
    """An escalation reason: required, bounded, no NUL."""
    v = _Violations()
    v.text(field_name, reason, maximum=REASON_MAX, required=True)
    v.raise_if_any()
    return reason


def payload_hash(analysis: Analysis) -> str:
    """SHA-256 of the analysis in a canonical form: equal payloads, equal hashes."""

    def when(value: datetime | None) -> str | None:
        return value.astimezone(UTC).isoformat() if value else None

    canonical = {
        "analysis_id": analysis.analysis_id,
        "incident_id": analysis.incident_id,
        "threat_level": analysis.threat_level,
        "source_ip": analysis.source_ip,
        "attributed_actor": analysis.attributed_actor,
        "confidence": repr(float(analysis.confidence)),
        "iocs": list(analysis.iocs),
        "ttps": list(analysis.ttps),
        "recommended_actions": [
            [int(a.type), a.target, a.description] for a in analysis.recommended_actions
        ],
        "forensic_summary": analysis.forensic_summary,
        "priority": int(analysis.priority),
        "detected_at": when(analysis.detected_at),
        "expires_at": when(analysis.expires_at),
    }
    encoded = json.dumps(canonical, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


def action_hash(action: Action) -> str:
    """SHA-256 (hex) of an action's canonical type and target, what CANDI re-computes.

    The canonical form is the JSON object {"target": <target>, "type": "ACTION_TYPE_<NAME>"}
    with sorted keys, no spaces and UTF-8 text: the same in every language.
    """
    canonical = {"type": f"ACTION_TYPE_{action.type.name}", "target": action.target}
    encoded = json.dumps(canonical, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()
