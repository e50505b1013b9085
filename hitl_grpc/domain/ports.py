"""What domain and auth operations need from storage, as protocols the store implements."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from hitl_grpc.domain.access import StoredAccess
from hitl_grpc.domain.notifications import Delivery, DeliveryState
from hitl_grpc.domain.queue import PageEntry, QueueFilter, QueueKey, QueueStats
from hitl_grpc.domain.values import (
    Account,
    AccountCheck,
    ActionVerdict,
    Analysis,
    AnalysisId,
    AuditRecord,
    Decision,
    Principal,
    Role,
    UserId,
)

T = TypeVar("T")


class EventKind(enum.Enum):
    """How a change moves a decision relative to the open set."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


@dataclass(frozen=True)
class UserChanges:
    """Fields of an account to change; None leaves a field as it is."""

    role: Role | None = None
    active: bool | None = None
    email: str | None = None
    full_name: str | None = None
    password_hash: str | None = None
    # "" unbinds the account from its client certificate.
    certificate_subject: str | None = None
    # Cuts every live access token of the account (they carry the old generation).
    bump_generation: bool = False


@dataclass(frozen=True)
class StoredRefreshToken:
    """A refresh token as stored (its hash only)."""

    id: str
    user_id: UserId
    family_id: str
    expires_at: datetime
    rotated_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class ThrottleState:
    """Login failures counted for one subject (a username or a peer host)."""

    subject: str
    failures: int
    window_started_at: datetime
    locked_until: datetime | None
    lockouts: int


@dataclass(frozen=True)
class AuditQuery:
    """Filters and a page of the audit trail, newest first."""

    actor: str = ""
    kind: str = ""
    target: str = ""
    since: datetime | None = None
    until: datetime | None = None
    before_id: int | None = None
    limit: int = 100


class UserRepository(Protocol):
    """Accounts."""

    async def get(self, user_id: UserId) -> Account | None: ...

    async def by_username(self, username: str) -> Account | None: ...

    async def by_certificate_subject(self, subject: str) -> Account | None: ...

    async def has_session(self, user_id: UserId, session_id: str) -> bool: ...

    async def add(self, account: Account) -> None: ...

    async def count(self) -> int: ...

    async def set_password_hash(self, user_id: UserId, password_hash: str) -> None: ...

    async def get_for_update(self, user_id: UserId) -> Account | None: ...

    async def with_session(
        self, user_id: UserId, session_id: str
    ) -> tuple[Account, bool] | None: ...

    async def list_page(self, after_key: str | None, limit: int) -> list[Account]: ...

    async def update(
        self, user_id: UserId, changes: UserChanges, at: datetime
    ) -> Account | None: ...

    async def lock_active_admins(self) -> list[UserId]: ...

    async def set_mfa_pending(self, user_id: UserId, secret: str | None, at: datetime) -> None: ...

    async def enable_mfa(self, user_id: UserId, secret: str, step: int, at: datetime) -> None: ...

    async def disable_mfa(self, user_id: UserId, at: datetime) -> None: ...

    async def claim_mfa_step(self, user_id: UserId, step: int) -> bool: ...


class BackupCodeRepository(Protocol):
    """MFA backup codes, stored hashed; each works once."""

    async def replace(self, user_id: UserId, code_hashes: list[str]) -> None: ...

    async def use(self, user_id: UserId, code_hash: str, at: datetime) -> bool: ...


class LoginThrottleRepository(Protocol):
    """Login failure counters, shared by every replica."""

    async def peek(self, subjects: list[str]) -> list[ThrottleState]: ...

    async def lock(self, subject: str, now: datetime) -> ThrottleState: ...

    async def lock_and_peek(
        self, subject: str, now: datetime, others: list[str]
    ) -> tuple[ThrottleState, list[ThrottleState]]: ...

    async def touch(self, subject: str, now: datetime) -> None: ...

    async def save(self, state: ThrottleState) -> None: ...

    async def release(self, subject: str) -> None: ...

    async def clear(self, subject: str) -> None: ...


class RefreshTokenRepository(Protocol):
    """Refresh tokens, stored as hashes."""

    async def add(
        self,
        *,
        token_id: str,
        user_id: UserId,
        family_id: str,
        token_hash: str,
        issued_at: datetime,
        expires_at: datetime,
    ) -> None: ...

    async def by_hash(self, token_hash: str) -> StoredRefreshToken | None: ...

    async def rotate(self, token_id: str, at: datetime) -> bool: ...

    async def revoke_family(self, family_id: str, at: datetime) -> int: ...

    async def revoke_user_sessions(
        self, user_id: UserId, at: datetime, *, keep_family: str = ""
    ) -> int: ...


class AuditLog(Protocol):
    """The append-only audit trail."""

    async def append(self, record: AuditRecord) -> None: ...

    async def query(self, query: AuditQuery) -> list[AuditRecord]: ...

    async def after(self, seq: int, limit: int) -> list[AuditRecord]: ...

    async def last_seq(self) -> int: ...


class WebhookOutbox(Protocol):
    """Outgoing webhook notifications, queued in the transaction of their change."""

    async def enqueue(self, event_type: str, body: dict[str, Any]) -> None: ...


class DeliveryLog(Protocol):
    """Webhook deliveries as admins read them."""

    async def page(
        self, state: DeliveryState | None, after_id: int, limit: int
    ) -> list[Delivery]: ...


class EventLog(Protocol):
    """The decision outbox: appended in the same transaction as the change."""

    async def append(self, decision: Decision, kind: EventKind) -> None: ...


class DecisionRepository(Protocol):
    """Decisions: every change is one compare-and-set on status and version.

    Every time that replicas must agree on comes from the database's clock, read in
    the statement that needs it: a replica's own clock may be off.
    """

    async def insert(
        self,
        analysis: Analysis,
        payload_hash: str,
        *,
        submitted_by: str,
        sla: timedelta,
        action_verdicts: tuple[ActionVerdict, ...] = (),
    ) -> Decision | None: ...

    async def now(self) -> datetime: ...

    async def get(self, analysis_id: AnalysisId) -> Decision | None: ...

    async def get_with_now(self, analysis_id: AnalysisId) -> tuple[Decision, datetime] | None: ...

    async def get_with_hash(self, analysis_id: AnalysisId) -> tuple[Decision, str] | None: ...

    async def replace(
        self, before: Decision, after: Decision, *, sla_breached: bool = False
    ) -> Decision | None: ...

    async def list_open(
        self, queue_filter: QueueFilter, after: QueueKey | None, limit: int
    ) -> list[Decision]: ...

    async def open_keys(
        self, queue_filter: QueueFilter, after: QueueKey | None, limit: int
    ) -> list[PageEntry]:
        """list_open's decisions as their versions and places only."""
        ...

    async def expired(self, limit: int) -> list[tuple[Decision, datetime]]: ...

    async def overdue(self, limit: int) -> list[tuple[Decision, datetime]]: ...

    async def lapsed_leases(self, limit: int) -> list[tuple[Decision, datetime]]: ...
    async def held_leases(
        self, username: str, within: timedelta, limit: int
    ) -> list[tuple[Decision, datetime]]: ...

    async def stats(self) -> QueueStats: ...


class Repositories(Protocol):
    """Every repository over one transaction."""

    @property
    def users(self) -> UserRepository: ...

    @property
    def refresh_tokens(self) -> RefreshTokenRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def backup_codes(self) -> BackupCodeRepository: ...

    @property
    def throttle(self) -> LoginThrottleRepository: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def decisions(self) -> DecisionRepository: ...

    @property
    def webhooks(self) -> WebhookOutbox: ...


class UnitOfWork(Repositories, Protocol):
    """One transaction over every repository; nothing persists until commit()."""

    async def commit(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class StepUp(Protocol):
    """Checks a fresh second factor for a high-impact approval, spending the code."""

    async def verify(self, principal: Principal, code: str, what: str) -> None: ...


@dataclass(frozen=True)
class CheckedSubmit:
    """What one folded submit statement found and did."""

    # The caller's account as the statement read it (None: no such account).
    access: StoredAccess | None
    # The decision it queued; None if the account refused, the id was taken or it expired.
    decision: Decision | None
    # The database's time of the statement.
    now: datetime | None


@dataclass(frozen=True)
class CheckedPage:
    """What one folded page read found: the caller's account, and the page's keys."""

    # The caller's account as the statement read it (None: no such account).
    access: StoredAccess | None
    # The open decisions in queue order, as versions and places; empty if refused.
    keys: list[PageEntry]


class HotStatements(Protocol):
    """The statements most calls run, each one round trip (store/hot.py, PostgreSQL)."""

    async def account_with_session(
        self, user_id: UserId, session_id: str
    ) -> tuple[Account, bool] | None: ...

    async def submit(
        self,
        check: AccountCheck,
        pending: Decision,
        payload_hash: str,
        *,
        sla: timedelta,
        audit: AuditRecord,
    ) -> CheckedSubmit:
        """Queues `pending` only if the account admits `check`; its times and `audit`'s are
        the statement's."""
        ...

    async def page_keys(
        self, check: AccountCheck, queue_filter: QueueFilter, after: QueueKey | None, limit: int
    ) -> CheckedPage:
        """The account, and only if it admits `check` the next `limit` open decisions' keys."""
        ...


class UnitOfWorkFactory(Protocol):
    """Opens a unit of work; read-only ones don't take SQLite's write lock.

    A pipelined one (PostgreSQL) sends the writes that return nothing together with the
    next statement that returns rows, or with its COMMIT: for a unit of work that runs
    only the repositories' sign-in statements (store/prepared.py).
    """

    def __call__(self, *, readonly: bool = False, pipelined: bool = False) -> UnitOfWork: ...

    async def write(self, work: Callable[[Repositories], Awaitable[T]]) -> T:
        """Runs `work` and commits what it wrote, or nothing if it raises; its result.

        Concurrent writes may share one transaction and one commit (group commit): each
        still lands whole or not at all, and one that raises never undoes another.
        """
        ...
