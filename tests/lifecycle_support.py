"""Domain decisions and callers for the pure lifecycle tests: no server, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hitl_grpc.domain.validation import Verdict
from hitl_grpc.domain.values import (
    Action,
    ActionType,
    Analysis,
    AnalysisId,
    Decision,
    Principal,
    Priority,
    Role,
    Status,
    UserId,
)

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
SLA = timedelta(minutes=15)
BLOCK = Action(ActionType.BLOCK_IP, "203.0.113.7")


def principal(name: str, role: Role = Role.ANALYST) -> Principal:
    """A signed-in caller."""
    return Principal(user_id=UserId(f"id-{name}"), username=name, role=role, token_id="t")


ANA = principal("ana")
BOB = principal("bob")
ADMIN = principal("root", Role.ADMIN)
CANDI = principal("candi", Role.SERVICE)


def pending(*, expires_in: timedelta | None = None) -> Decision:
    """A decision just submitted at T0 by CANDI."""
    analysis = Analysis(
        analysis_id=AnalysisId("an-1"),
        incident_id="inc-1",
        threat_level="high",
        source_ip="203.0.113.7",
        attributed_actor="APT29",
        confidence=90.0,
        iocs=("203.0.113.7",),
        ttps=("T1566",),
        recommended_actions=(BLOCK,),
        forensic_summary="phishing",
        priority=Priority.CRITICAL,
        detected_at=T0 - timedelta(minutes=1),
        expires_at=T0 + expires_in if expires_in is not None else None,
    )
    return Decision(
        analysis=analysis,
        status=Status.PENDING,
        version=1,
        created_at=T0,
        updated_at=T0,
        sla_deadline=T0 + SLA,
        submitted_by=CANDI.username,
    )


def verdict(status: Status, *actions: Action, notes: str = "", reason: str = "") -> Verdict:
    """A validated MakeDecision request."""
    return Verdict(status, tuple(actions), notes, reason)


def at(minutes: float) -> datetime:
    """T0 plus some minutes."""
    return T0 + timedelta(minutes=minutes)
