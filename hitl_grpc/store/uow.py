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
        timeout_s: float | None = None,
        detached: set[asyncio.Task[AsyncConnection]] | None = None,
    ) -> None:
        self._engine = engine
        self._detached = detached if detached is not None else set()
        self._readonly = readonly
        self._after_commit = after_commit
        self._timeout_s = timeout_s
        self._deadline: asyncio.Timeout | None = None
        self._conn: AsyncConnection | None = None

    @property
    def connection(self) -> AsyncConnection:
        """The transaction's connection, for repositories added by other modules."""
        assert self._conn is not None, "unit of work used outside 'async with'"
        return self._conn

    async def __aenter__(self) -> Self:
        # The whole unit runs under one deadline: a database that drops packets
        # (even during the pool's liveness ping) is UNAVAILABLE, never a hang.
        if self._timeout_s is not None:
            self._deadline = asyncio.timeout(self._timeout_s)
            await self._deadline.__aenter__()
        try:
            await self._open()
        except BaseException as exc:
            await self._end_deadline(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _connect(self) -> AsyncConnection:
        # On a cancelled query psycopg first tries a server-side cancel and waits for
        # it (up to 10 s) before re-raising. Checkout (with its liveness ping) is the
        # usual place a dead network is first met, so it runs detached: the caller
        # leaves at its deadline and the checkout finishes, or is discarded, alone.
        if self._engine.dialect.name != "postgresql":
            return await self._engine.connect()  # a local file: checkout never waits on a network
        checkout = asyncio.ensure_future(self._engine.connect())
        try:
            return await asyncio.shield(checkout)
        except BaseException:
            checkout.cancel()
            self._detached.add(checkout)
            checkout.add_done_callback(self._discard_late_checkout)
            raise

    def _discard_late_checkout(self, checkout: asyncio.Task[AsyncConnection]) -> None:
        self._detached.discard(checkout)
        if not checkout.cancelled() and checkout.exception() is None:
            late = asyncio.ensure_future(_discard(checkout.result()))
            late.add_done_callback(lambda _: None)

    async def _open(self) -> None:
        try:
            conn = await self._connect()
        except Exception as exc:
            if is_unavailable(exc):
                raise errors.Unavailable("database unavailable, retry later") from exc
            raise
        self._conn = conn
        try:
            if self._readonly:
                # Reads need no BEGIN/ROLLBACK round trips: under READ COMMITTED every
                # statement takes its own snapshot whether or not it is in a transaction.
                options: dict[str, object] = {READONLY: True}
                if conn.dialect.name == "postgresql":
                    options["isolation_level"] = "AUTOCOMMIT"
                await conn.execution_options(**options)
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

    async def _end_deadline(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is None:
            return
        try:
            await deadline.__aexit__(exc_type, exc, tb)
        except TimeoutError as timed_out:
            raise errors.Unavailable("database did not answer in time, retry later") from timed_out

    async def commit(self) -> None:
        """Makes every change of this unit durable at once."""
        # The events go last, in one statement; PostgreSQL publishes them in the COMMIT.
        await self.events.flush()
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
        try:
            await self._close(exc)
        finally:
            await self._end_deadline(exc_type, exc, tb)

    async def _close(self, exc: BaseException | None) -> None:
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

    def __init__(self, engine: AsyncEngine, *, timeout_s: float | None = None) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        # Checkouts abandoned at a deadline, kept referenced until they finish.
        self.detached: set[asyncio.Task[AsyncConnection]] = set()
        # Set by the server once its event reader exists.
        self.after_commit: Callable[[], None] | None = None

    async def drain(self, timeout_s: float) -> None:
        """Waits for checkouts abandoned at a deadline, before the engine is disposed."""
        if self.detached:
            await asyncio.wait(set(self.detached), timeout=timeout_s)

    def __call__(self, *, readonly: bool = False) -> UnitOfWork:
        """A new, not yet entered, unit of work."""
        return UnitOfWork(
            self.engine,
            readonly=readonly,
            after_commit=self.after_commit,
            timeout_s=self.timeout_s,
            detached=self.detached,
        )
