"""What domain and auth operations need from storage, as protocols the store implements."""

from __future__ import annotations

import enum
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self

from hitl_grpc.domain.queue import QueueFilter, QueueKey, QueueStats
from hitl_grpc.domain.values import Account, AnalysisId, AuditRecord, Decision, UserId


class EventKind(enum.Enum):
    """How a change moves a decision relative to the open set."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


class UserRepository(Protocol):
    """Accounts."""

    async def get(self, user_id: UserId) -> Account | None: ...

    async def by_username(self, username: str) -> Account | None: ...

    async def add(self, account: Account) -> None: ...

    async def count(self) -> int: ...

    async def set_password_hash(self, user_id: UserId, password_hash: str) -> None: ...


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


class AuditLog(Protocol):
    """The append-only audit trail."""

    async def append(self, record: AuditRecord) -> None: ...


class EventLog(Protocol):
    """The decision outbox: appended in the same transaction as the change."""

    async def append(self, decision: Decision, kind: EventKind) -> None: ...


class DecisionRepository(Protocol):
    """Decisions: every change is one compare-and-set on status and version."""

    async def insert(self, decision: Decision, payload_hash: str) -> bool: ...

    async def get(self, analysis_id: AnalysisId) -> Decision | None: ...

    async def get_with_hash(self, analysis_id: AnalysisId) -> tuple[Decision, str] | None: ...

    async def replace(
        self, before: Decision, after: Decision, *, sla_breached: bool = False
    ) -> Decision | None: ...

    async def list_open(
        self, queue_filter: QueueFilter, after: QueueKey | None, limit: int
    ) -> list[Decision]: ...

    async def expired(self, now: datetime, limit: int) -> list[Decision]: ...

    async def overdue(self, now: datetime, limit: int) -> list[Decision]: ...

    async def lapsed_leases(self, now: datetime, limit: int) -> list[Decision]: ...

    async def stats(self, now: datetime) -> QueueStats: ...


class UnitOfWork(Protocol):
    """One transaction over every repository; nothing persists until commit()."""

    @property
    def users(self) -> UserRepository: ...

    @property
    def refresh_tokens(self) -> RefreshTokenRepository: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def decisions(self) -> DecisionRepository: ...

    async def commit(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class UnitOfWorkFactory(Protocol):
    """Opens a unit of work; read-only ones don't take SQLite's write lock."""

    def __call__(self, *, readonly: bool = False) -> UnitOfWork: ...
