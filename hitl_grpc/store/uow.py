"""The unit of work: one transaction, its repositories, and database faults as domain errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hitl_grpc.domain import errors
from hitl_grpc.store.audit import AuditLog
from hitl_grpc.store.backup_codes import BackupCodeRepository
from hitl_grpc.store.decisions import DecisionRepository
from hitl_grpc.store.engine import READONLY
from hitl_grpc.store.events import EventLog
from hitl_grpc.store.refresh_tokens import RefreshTokenRepository
from hitl_grpc.store.throttle import LoginThrottleRepository
from hitl_grpc.store.users import UserRepository

# What "the database is not there" looks like from the driver or the pool.
UNAVAILABLE_ERRORS = (OperationalError, InterfaceError, PoolTimeout, OSError, TimeoutError)


def is_unavailable(exc: BaseException) -> bool:
    """Whether an exception means the database could not be reached or answered in time."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, UNAVAILABLE_ERRORS)


class UnitOfWork:
    """One transaction; nothing persists until commit()."""

    users: UserRepository
    refresh_tokens: RefreshTokenRepository
    audit: AuditLog
    backup_codes: BackupCodeRepository
    throttle: LoginThrottleRepository
    events: EventLog
    decisions: DecisionRepository

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        readonly: bool = False,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._readonly = readonly
        self._after_commit = after_commit
        self._conn: AsyncConnection | None = None

    @property
    def connection(self) -> AsyncConnection:
        """The transaction's connection, for repositories added by other modules."""
        assert self._conn is not None, "unit of work used outside 'async with'"
        return self._conn

    async def __aenter__(self) -> Self:
        try:
            conn = await self._engine.connect()
        except Exception as exc:
            if is_unavailable(exc):
                raise errors.Unavailable("database unavailable, retry later") from exc
            raise
        self._conn = conn
        try:
            if self._readonly:
                await conn.execution_options(**{READONLY: True})
            await conn.begin()
        except BaseException as exc:
            await conn.invalidate()
            await conn.close()
            if isinstance(exc, Exception) and is_unavailable(exc):
                raise errors.Unavailable("database unavailable, retry later") from exc
            raise
        self.users = UserRepository(conn)
        self.refresh_tokens = RefreshTokenRepository(conn)
        self.audit = AuditLog(conn)
        self.backup_codes = BackupCodeRepository(conn)
        self.throttle = LoginThrottleRepository(conn)
        self.events = EventLog(conn)
        self.decisions = DecisionRepository(conn)
        return self

    async def commit(self) -> None:
        """Makes every change of this unit durable at once."""
        await self.connection.commit()
        if self.events.appended and self._after_commit is not None:
            # Wakes this process's event reader; other processes learn by NOTIFY.
            self._after_commit()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self.connection
        self._conn = None
        if isinstance(exc, asyncio.CancelledError | TimeoutError):
            # A cancelled query may leave the connection mid-protocol: never reuse it.
            await asyncio.shield(_discard(conn))
        else:
            try:
                await conn.rollback()  # no effect after commit()
                await conn.close()
            except Exception as cleanup:
                await _discard(conn)
                if exc is None and is_unavailable(cleanup):
                    raise errors.Unavailable("database unavailable, retry later") from cleanup
        if exc is not None and not isinstance(exc, errors.DomainError) and is_unavailable(exc):
            raise errors.Unavailable("database unavailable, retry later") from exc


async def _discard(conn: AsyncConnection) -> None:
    try:
        await conn.invalidate()
        await conn.close()
    except Exception:  # noqa: S110 - the connection is being thrown away either way
        pass


class UnitOfWorkFactory:
    """Opens units of work on one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Set by the server once its event reader exists.
        self.after_commit: Callable[[], None] | None = None

    def __call__(self, *, readonly: bool = False) -> UnitOfWork:
        """A new, not yet entered, unit of work."""
        return UnitOfWork(self.engine, readonly=readonly, after_commit=self.after_commit)
