"""Core statements compiled once, then sent through psycopg itself on PostgreSQL.

A statement sent through SQLAlchemy's async bridge costs about three times the client
CPU of the same statement sent by psycopg (see store/hot.py). The statements of every
sign-in (the throttle's counters, the account read, the refresh token, the audit rows)
go this way on PostgreSQL: compiled by SQLAlchemy once, bound and sent by psycopg on the
unit of work's own connection, so they stay inside its transaction and its deadline. On
SQLite they run through SQLAlchemy as every other statement does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import Compiled


class Prepared:
    """One Core statement with named bind parameters, run with a mapping of their values.

    Literal values in the statement keep the values they were built with; `columns` names
    the columns an INSERT without .values() writes. Bind names are not column names
    ("b_subject", not "subject"): SQLAlchemy keeps those for the VALUES and SET it writes.
    """

    def __init__(self, statement: Executable, *, columns: Sequence[str] | None = None) -> None:
        self._statement = statement
        # Whether it returns rows, known before it runs (in pipeline mode nothing is yet).
        self._returns = len(statement.exported_columns) > 0  # type: ignore[attr-defined]
        self._columns = list(columns) if columns is not None else None
        # (SQL text, bound defaults, bind processors), compiled for PostgreSQL on first use.
        self._postgres: tuple[str, dict[str, Any], dict[str, Callable[[Any], Any]]] | None = None

    def _bound(self, dialect: Dialect, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The PostgreSQL SQL text and its parameters, converted as SQLAlchemy would."""
        if self._postgres is None:
            compiled: Compiled = self._statement.compile(  # type: ignore[attr-defined]
                dialect=dialect, column_keys=self._columns
            )
            # The type conversions SQLAlchemy applies to these binds (JSON), compiled once.
            processors = dict(compiled._bind_processors)  # type: ignore[attr-defined]
            self._postgres = (compiled.string, dict(compiled.params), processors)
        sql, defaults, processors = self._postgres
        values = {**defaults, **params}
        for name, process in processors.items():
            values[name] = process(values[name])
        return sql, values

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> list[Any]:
        """Runs the statement on `conn`; the rows it returned (attribute access by name)."""
        return await (await self.send(conn, params)).rows()

    async def send(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Sent:
        """Sends the statement on `conn`, its rows read later: in a pipelined unit, statements
        sent one after another reach the database in one round trip, and run in that order."""
        if conn.dialect.name != "postgresql":
            result = await conn.execute(self._statement, dict(params))
            return Sent(list(result) if result.returns_rows else [])
        sql, values = self._bound(conn.dialect, params)
        # Not closed after use: in pipeline mode its result may arrive at a later sync.
        cursor = driver_of(conn).cursor(row_factory=namedtuple_row)
        try:
            await cursor.execute(sql, values)
        except psycopg.Error as exc:
            raise _as_sqlalchemy(conn, sql, values, exc) from exc
        return Sent(None, (cursor, conn, sql, values) if self._returns else None)

    async def many(self, conn: AsyncConnection, params: Sequence[Mapping[str, Any]]) -> None:
        """Runs the statement once per mapping, returning nothing (inserts of several rows)."""
        if conn.dialect.name != "postgresql":
            await conn.execute(self._statement, [dict(p) for p in params])
            return
        bound = [self._bound(conn.dialect, p) for p in params]
        sql = bound[0][0]
        cursor = driver_of(conn).cursor()
        try:
            if len(bound) == 1:
                await cursor.execute(sql, bound[0][1])
            else:
                await cursor.executemany(sql, [values for _, values in bound])
        except psycopg.Error as exc:
            raise _as_sqlalchemy(conn, sql, bound, exc) from exc


class Sent:
    """A statement sent by Prepared.send(): its rows, fetched when first asked for."""

    def __init__(
        self, rows: list[Any] | None, pending: tuple[Any, AsyncConnection, str, Any] | None = None
    ) -> None:
        self._rows = rows
        self._pending = pending

    async def rows(self) -> list[Any]:
        """The rows the statement returned (none for one that returns nothing)."""
        if self._rows is None:
            self._rows = []
            if self._pending is not None:
                cursor, conn, sql, values = self._pending
                try:
                    self._rows = await cursor.fetchall()
                except psycopg.Error as exc:
                    raise _as_sqlalchemy(conn, sql, values, exc) from exc
        return self._rows


def driver_of(conn: AsyncConnection) -> Any:
    """The psycopg connection under a SQLAlchemy one already in its transaction."""
    return conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]


def _as_sqlalchemy(
    conn: AsyncConnection, sql: str, params: Any, exc: psycopg.Error
) -> StatementError:
    """The error SQLAlchemy raises for this driver error (IntegrityError for a key taken,
    OperationalError with connection_invalidated for a lost server), so callers see one
    kind of error whichever way the statement went."""
    # psycopg is the DBAPI module of this dialect; its errors are what is_disconnect reads.
    lost = conn.dialect.is_disconnect(cast(Any, exc), driver_of(conn), None)
    return DBAPIError.instance(sql, params, exc, psycopg.Error, connection_invalidated=lost)
