"""The one door to the database: every connection of the process is opened here.

Each passage (a unit of work, an event-log read, the health probe, the LISTEN session)
runs under one deadline, never reuses a connection its caller gave up on, and turns
"the database is not there" into errors.Unavailable, so no path can hang on a silent
network. A cancelled PostgreSQL wait closes its connection at once (DroppedOnCancel),
so a caller leaves at its deadline instead of after psycopg's own cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Final, Self

import psycopg
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hitl_grpc.domain import errors
from hitl_grpc.store.engine import READONLY, DroppedOnCancel, postgres_connect_args
from hitl_grpc.store.prepared import driver_of

# What "the database is not there" looks like from the driver or the pool.
UNAVAILABLE_ERRORS = (
    OperationalError,
    InterfaceError,
    PoolTimeout,
    OSError,
    TimeoutError,
    # psycopg's own, from the LISTEN session (no SQLAlchemy wrapper there).
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
UNAVAILABLE: Final = "database unavailable, retry later"
LATE: Final = "database did not answer in time, retry later"


def is_unavailable(exc: BaseException) -> bool:
    """Whether an exception means the database could not be reached or answered in time."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, UNAVAILABLE_ERRORS)


async def _discard(conn: AsyncConnection) -> None:
    try:
        await conn.invalidate()
        await conn.close()
    except Exception:  # noqa: S110 - the connection is being thrown away either way
        pass


class Passage:
    """One connection in one transaction, under one deadline; faults leave as Unavailable."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        timeout_s: float | None,
        readonly: bool = False,
        isolation: str | None = None,
        pipelined: bool = False,
    ) -> None:
        self._engine = engine
        # PostgreSQL's pipeline mode for the whole transaction (UnitOfWorkFactory).
        self._pipelined = pipelined and engine.dialect.name == "postgresql"
        self._pipeline: psycopg.AsyncPipeline | None = None
        self._timeout_s = timeout_s
        self._readonly = readonly
        self._isolation = isolation
        self._deadline: asyncio.Timeout | None = None
        self._conn: AsyncConnection | None = None
        # Set by commit(): the close then has no transaction left to roll back.
        self._committed = False

    @property
    def connection(self) -> AsyncConnection:
        """The transaction's connection."""
        assert self._conn is not None, "passage used outside 'async with'"
        return self._conn

    async def __aenter__(self) -> Self:
        if self._timeout_s is not None:
            self._deadline = asyncio.timeout(self._timeout_s)
            await self._deadline.__aenter__()
        try:
            await self._open()
        except BaseException as exc:
            await self._end_deadline(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _open(self) -> None:
        try:
            conn = await self._engine.connect()
        except Exception as exc:
            if is_unavailable(exc):
                raise errors.Unavailable(UNAVAILABLE) from exc
            raise
        self._conn = conn
        try:
            options = self._options(conn)
            if options:
                await conn.execution_options(**options)
            await conn.begin()
            if self._pipelined:
                driver = driver_of(conn)
                self._pipeline = driver.pipeline()
                await self._pipeline.__aenter__()
        except BaseException as exc:
            self._conn = None
            await asyncio.shield(_discard(conn))
            if isinstance(exc, Exception) and is_unavailable(exc):
                raise errors.Unavailable(UNAVAILABLE) from exc
            raise

    def _options(self, conn: AsyncConnection) -> dict[str, Any]:
        postgres = conn.dialect.name == "postgresql"
        if self._isolation is not None and postgres:
            return {"isolation_level": self._isolation, "postgresql_readonly": self._readonly}
        if not self._readonly:
            return {}
        # Reads need no BEGIN/ROLLBACK round trips: under READ COMMITTED every statement
        # takes its own snapshot whether or not it is in a transaction.
        return {READONLY: True, "isolation_level": "AUTOCOMMIT"} if postgres else {READONLY: True}

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
            raise errors.Unavailable(LATE) from timed_out

    async def commit(self) -> None:
        """Makes every change of this passage durable at once."""
        await self.connection.commit()
        self._committed = True

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
        pipeline, self._pipeline = self._pipeline, None
        if isinstance(exc, asyncio.CancelledError | TimeoutError):
            # A cancelled query may leave the connection mid-protocol: never reuse it.
            await asyncio.shield(_discard(conn))
        elif pipeline is not None and not await _left(pipeline, exc):
            await asyncio.shield(_discard(conn))
        else:
            try:
                # After a commit there is nothing to undo (close() would still roll back a
                # transaction begun since): the rollback would cost a greenlet hop for naught.
                if not self._committed:
                    await conn.rollback()
                await conn.close()
            except BaseException as cleanup:
                await asyncio.shield(_discard(conn))
                if not isinstance(cleanup, Exception):
                    raise
                if exc is None and is_unavailable(cleanup):
                    raise errors.Unavailable(UNAVAILABLE) from cleanup
        if exc is not None and not isinstance(exc, errors.DomainError) and is_unavailable(exc):
            raise errors.Unavailable(UNAVAILABLE) from exc


async def _left(pipeline: psycopg.AsyncPipeline, exc: BaseException | None) -> bool:
    """Ends pipeline mode, sending what is still queued (rolled back unless committed):
    whether the connection came out of it fit for reuse. A failure here changes nothing:
    the COMMIT, if there was one, already reported how it went."""
    try:
        await pipeline.__aexit__(type(exc) if exc else None, exc, None)
    except psycopg.Error:
        return False
    return True


class Door:
    """Opens every passage to one database, each under the process's database deadline."""

    def __init__(self, engine: AsyncEngine, *, timeout_s: float | None) -> None:
        self.engine = engine
        self.timeout_s = timeout_s
        self.postgres = engine.dialect.name == "postgresql"

    def passage(
        self,
        *,
        readonly: bool = False,
        isolation: str | None = None,
        timeout_s: float | None = None,
    ) -> Passage:
        """One transaction; `timeout_s` shortens the door's deadline, never lengthens it."""
        return Passage(
            self.engine,
            timeout_s=self._deadline(timeout_s),
            readonly=readonly,
            isolation=isolation,
        )

    def _deadline(self, timeout_s: float | None) -> float | None:
        if timeout_s is None:
            return self.timeout_s
        return timeout_s if self.timeout_s is None else min(timeout_s, self.timeout_s)

    def connections_in_use(self) -> int:
        """Pooled connections checked out now (safe to read from any thread)."""
        return int(self.engine.pool.checkedout())  # type: ignore[attr-defined]

    async def ping(self, *, timeout_s: float | None = None) -> None:
        """Returns once the database answers a trivial query; raises Unavailable otherwise."""
        async with self.passage(readonly=True, timeout_s=timeout_s) as passage:
            await passage.connection.execute(text("SELECT 1"))

    @contextlib.asynccontextmanager
    async def listening(self, channel: str) -> AsyncIterator[Listener]:
        """A session of its own (outside the pool) LISTENing on `channel`; PostgreSQL only."""
        timeout_s = self.timeout_s or 5.0
        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        args = postgres_connect_args(timeout_s)
        args["application_name"] = "hitl-grpc-listen"
        try:
            async with asyncio.timeout(timeout_s):
                conn = await DroppedOnCancel.connect(url, autocommit=True, **args)
        except Exception as exc:
            if is_unavailable(exc):
                raise errors.Unavailable(UNAVAILABLE) from exc
            raise
        try:
            listener = Listener(conn, timeout_s)
            await listener.run(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            yield listener
        finally:
            await conn.close()


class Listener:
    """The notifications of one LISTEN session; a silent session is found out and ended."""

    def __init__(self, conn: DroppedOnCancel, timeout_s: float) -> None:
        self._conn = conn
        self._timeout_s = timeout_s

    async def run(self, statement: sql.SQL | sql.Composed) -> None:
        """Runs a statement on the session under the deadline."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._conn.execute(statement)
        except Exception as exc:
            if is_unavailable(exc):
                raise errors.Unavailable(UNAVAILABLE) from exc
            raise

    async def payloads(self, idle_s: float) -> AsyncIterator[str]:
        """Each notification's payload; raises Unavailable once the session stops answering.

        After `idle_s` without a notification the session must answer a query within the
        deadline: over a network that drops packets, waiting for notifications alone would
        never notice that none can come.
        """
        while True:
            try:
                async for note in self._conn.notifies(timeout=idle_s):
                    yield note.payload
            except Exception as exc:
                if is_unavailable(exc):
                    raise errors.Unavailable(UNAVAILABLE) from exc
                raise
            await self.run(sql.SQL("SELECT 1"))
