"""Value types shared by every layer: ids, enums and frozen records."""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, NewType

from hitl_grpc.domain.errors import InvalidField
from hitl_grpc.domain.request_id import current as current_request_id

UserId = NewType("UserId", str)
AnalysisId = NewType("AnalysisId", str)


class Role(enum.IntEnum):
    """Account roles; values equal the wire enum's numbers."""

    ADMIN = 1
    ANALYST = 2
    VIEWER = 3
    SERVICE = 4


class Priority(enum.IntEnum):
    """Queue priority; a lower value is served first. Values equal the wire enum's."""

    CRITICAL = 1
    HIGH = 2
    MEDIUM = 3
    LOW = 4


class Status(enum.IntEnum):
    """Decision lifecycle states; values equal the wire enum's."""

    PENDING = 1
    IN_REVIEW = 2
    APPROVED = 3
    REJECTED = 4
    ESCALATED = 5
    EXPIRED = 6


class ActionType(enum.IntEnum):
    """What CANDI may execute; values equal the wire enum's."""

    BLOCK_IP = 1
    QUARANTINE_SYSTEM = 2
    ACTIVATE_KILLSWITCH = 3
    DEPLOY_COUNTERMEASURE = 4
    ESCALATE_TO_SOC = 5
    NO_ACTION = 6
    CUSTOM = 7


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of an RPC."""

    user_id: UserId
    username: str
    role: Role
    token_id: str
    peer: str = ""
    # The refresh-token family the access token was issued with: one sign-in session.
    session_id: str = ""


@dataclass(frozen=True)
class AccountCheck:
    """A verified access token whose account the call's own statement checks.

    Everything the check compares the stored account with: the token's session and
    generation, the roles the method allows, and the account's name, which never changes
    once the account exists (so a process may remember it from an earlier check).
    """

    user_id: UserId
    username: str
    session_id: str
    generation: int
    token_id: str
    peer: str
    roles: frozenset[Role]
    method: str


@dataclass(frozen=True)
class User:
    """An account as the rest of the service sees it (no secrets)."""

    id: UserId
    username: str
    role: Role
    email: str
    full_name: str
    active: bool
    mfa_enabled: bool
    created_at: datetime
    # The client-certificate subject a SERVICE account signs in with, if bound to one.
    certificate_subject: str = ""


@dataclass(frozen=True)
class Action:
    """A recommended or approved response."""

    type: ActionType
    target: str = ""
    description: str = ""


class ActionVerdictStatus(enum.IntEnum):
    """Where one action of a decision stands; values equal the wire enum's."""

    PENDING = 1
    APPROVED = 2
    REJECTED = 3


@dataclass(frozen=True)
class ActionVerdict:
    """The verdict on one action: who approved it, how many must, and the hash CANDI checks.

    `action_hash` is SHA-256 over the action's canonical type and target
    (validation.action_hash): CANDI executes an action only if its own hash of what it is
    about to run equals the approved one.
    """

    action: Action
    action_hash: str
    required_approvals: int = 1
    status: ActionVerdictStatus = ActionVerdictStatus.PENDING
    approved_by: tuple[str, ...] = ()
    rejected_by: str = ""


@dataclass(frozen=True)
class Resolution:
    """The human verdict on a decision."""

    status: Status
    approved_actions: tuple[Action, ...] = ()
    notes: str = ""
    escalation_reason: str = ""
    decided_by: str = ""
    decided_at: datetime | None = None


@dataclass(frozen=True)
class Analysis:
    """What CANDI submits: the analysis fields of a decision request."""

    analysis_id: AnalysisId
    incident_id: str
    threat_level: str
    source_ip: str
    attributed_actor: str
    confidence: float
    iocs: tuple[str, ...]
    ttps: tuple[str, ...]
    recommended_actions: tuple[Action, ...]
    forensic_summary: str
    priority: Priority
    detected_at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """An analysis with its place in the lifecycle."""

    analysis: Analysis
    status: Status
    version: int
    created_at: datetime
    updated_at: datetime
    sla_deadline: datetime
    submitted_by: str
    claimed_by: str = ""
    claim_expires_at: datetime | None = None
    resolution: Resolution | None = None
    # The review lease: its id while someone holds it, and its fencing epoch, which grows
    # by one on every new claim (never on a renewal) and is never reset.
    lease_id: str = ""
    lease_epoch: int = 0
    # One per action under judgement, in the recommended order (lifecycle.py).
    action_verdicts: tuple[ActionVerdict, ...] = ()

    @property
    def analysis_id(self) -> AnalysisId:
        """The decision's id."""
        return self.analysis.analysis_id


@dataclass(frozen=True)
class Account:
    """A user with the secrets only the auth layer reads."""

    user: User
    password_hash: str
    mfa_secret: str | None = None
    mfa_last_step: int | None = None
    mfa_pending_secret: str | None = None
    # Bumped to cut every live session at once; access tokens carry it as `gen`.
    generation: int = 0


class AuditOutcome(enum.IntEnum):
    """Whether an audited action took effect; values equal the wire enum's."""

    SUCCESS = 1
    FAILURE = 2
    DENIED = 3


@dataclass(frozen=True)
class AuditRecord:
    """One audited action, written in the transaction of the change it records."""

    time: datetime
    actor: str
    kind: str
    target: str
    peer: str
    outcome: AuditOutcome
    details: dict[str, str]
    id: int = 0
    # The request that caused it: made during a call, a record carries that call's id.
    request_id: str = field(default_factory=current_request_id)
    # Its place in the tamper-evident chain, once written (0 and '' before).
    seq: int = 0
    digest: str = ""
    prev_hash: str = ""
    hash: str = ""


USERNAME_MAX: Final = 150


def username_key(username: str) -> str:
    """The form usernames are compared in: NFKC-normalized and case-folded."""
    return unicodedata.normalize("NFKC", username).casefold()


def parse_username(raw: str, field_name: str = "username") -> str:
    """A username as stored: NFKC-normalized, trimmed, printable, bounded in both stored forms."""
    name = unicodedata.normalize("NFKC", raw).strip()
    if not name:
        raise InvalidField.one(field_name, "must not be empty")
    # Case folding can lengthen a name ('ß' -> 'ss'): the limit holds for the folded
    # key too, which is stored in a column of the same width.
    if len(name) > USERNAME_MAX or len(username_key(name)) > USERNAME_MAX:
        raise InvalidField.one(
            field_name, f"must be at most {USERNAME_MAX} characters, also when case-folded"
        )
    if any(unicodedata.category(ch).startswith(("C", "Z")) and ch != " " for ch in name):
        raise InvalidField.one(field_name, "must not contain control or separator characters")
    return name
