"""Engines for the two backends, tuned so that each behaves the same to the repositories."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from typing import Any, Final, TypeAlias, TypeVar

import psycopg
from psycopg import generators, pq, waiting
from psycopg.abc import PQGen
from psycopg.pq.abc import PGcancelConn
from sqlalchemy import event
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util.concurrency import in_greenlet

READONLY: Final = "hitl_readonly"
# How long after HITL_DB_TIMEOUT_S the server itself ends a transaction of ours that sits
# idle, its client gone (a replica cut off mid-transaction).
IDLE_IN_TRANSACTION_MARGIN_S: Final = 1.0
RV = TypeVar("RV")
Engine: TypeAlias = AsyncEngine  # what the layers above hold, without importing SQLAlchemy
SQLITE_DRIVER: Final = "sqlite+hitl_aiosqlite"


class ClosedNotTerminated(SQLiteDialect_aiosqlite):
    """aiosqlite, with a connection given up on closed behind its statement, not stopped.

    SQLAlchemy terminates an invalidated connection by starting a shielded close and, if
    its caller is cancelled meanwhile, stopping aiosqlite's thread under that close, which
    then waits forever for a thread that is gone (aiosqlite 0.22: close() after stop()),
    a task and an open file per call cancelled under a held write lock. A plain close
    runs once the statement ahead of it ends, which busy_timeout bounds.
    """

    supports_statement_cache = True  # SQL is compiled exactly as by aiosqlite's dialect

    def do_terminate(self, dbapi_connection: Any) -> None:
        """Closes in the connection's turn; off the loop (garbage collection) stops it."""
        if in_greenlet():
            self.do_close(dbapi_connection)  # type: ignore[no-untyped-call]
        else:
            super().do_terminate(dbapi_connection)


registry.register("sqlite.hitl_aiosqlite", __name__, ClosedNotTerminated.__name__)


class DroppedOnCancel(psycopg.AsyncConnection[Any]):
    """A psycopg connection that is closed, not cancelled, when its caller stops waiting.

    On a cancelled wait psycopg 3.3 sends a server-side cancel (up to 5 s), then waits up
    to 5 s more for the query to end: over a silent network that holds the caller 10 s
    past its deadline. A cancelled unit of work never reuses its connection anyway, so
    this one closes at once. The server-side cancel still goes out, detached and
    bounded by connect_timeout, so a healthy server stops the statement (and drops its
    locks) at once instead of at its next client_connection_check_interval.
    """

    _cancelling: asyncio.Task[None] | None = None

    async def wait(
        self,
        gen: PQGen[RV],
        interval: float = 0.1,
        timeout: float | None = None,  # noqa: ASYNC109 - psycopg's own signature
    ) -> RV:
        """Runs one protocol exchange; a cancel closes the connection instead of cancelling."""
        try:
            return await waiting.wait_async(
                gen, self.pgconn.socket, interval=interval, timeout=timeout
            )
        except asyncio.CancelledError:
            if self.pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                cancel = self.pgconn.cancel_conn()
                cancel.start()
                within_s = float(self.info.get_parameters().get("connect_timeout") or 5)
                self._cancelling = asyncio.ensure_future(_cancel_quietly(cancel, within_s))
            self.pgconn.finish()
            raise


async def _cancel_quietly(cancel: PGcancelConn, within_s: float) -> None:
    try:
        await waiting.wait_conn_async(generators.cancel(cancel), interval=0.1, timeout=within_s)
    except Exception:  # noqa: S110 - the server ends the session anyway once it sees the close
        pass
    finally:
        cancel.finish()


def postgres_connect_args(timeout_s: float) -> dict[str, Any]:
    """libpq and server settings that bound every session of ours by `timeout_s`."""
    probe_s = max(1, math.ceil(timeout_s / 3))
    return {
        "connect_timeout": max(1, math.ceil(timeout_s)),
        "application_name": "hitl-grpc",
        # Client side: a dead peer or path is noticed even on an idle or LISTEN connection.
        "keepalives": 1,
        "keepalives_idle": max(1, math.ceil(timeout_s)),
        "keepalives_interval": probe_s,
        "keepalives_count": 3,
        "tcp_user_timeout": math.ceil(2 * timeout_s * 1000),
        # Server side: a session whose client vanished ends by itself, releasing its locks.
        "options": " ".join(
            f"-c {name}={value}" for name, value in server_session_limits(timeout_s).items()
        ),
    }


def server_session_limits(timeout_s: float) -> dict[str, int]:
    """PostgreSQL settings (ms or s, as PostgreSQL counts them) for each of our sessions."""
    return {
        # A runaway statement is ended by the server, not only by our deadline.
        "statement_timeout": math.ceil(timeout_s * 1000),
        "idle_in_transaction_session_timeout": math.ceil(
            (timeout_s + IDLE_IN_TRANSACTION_MARGIN_S) * 1000
        ),
        # A statement running for a client that has gone is stopped within this.
        "client_connection_check_interval": max(100, math.ceil(timeout_s * 1000 / 2)),
        "tcp_keepalives_idle": max(1, math.ceil(timeout_s)),
        "tcp_keepalives_interval": max(1, math.ceil(timeout_s / 3)),
        "tcp_keepalives_count": 3,
    }


def normalize_url(raw: str) -> URL:
    """Picks the async driver for a plain `sqlite:` or `postgresql:` URL."""
    url = make_url(raw)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername=SQLITE_DRIVER)
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def make_engine(raw_url: str, *, timeout_s: float, pool_size: int = 10) -> AsyncEngine:
    """An async engine whose connections fail fast instead of hanging."""
    url = normalize_url(raw_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, timeout_s)
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout_s,
        # No liveness ping per checkout (two round trips a unit): a connection killed
        # server-side fails its first statement, that unit is UNAVAILABLE (retryable), and
        # SQLAlchemy then invalidates the whole pool. Cancelled units never return theirs.
        pool_recycle=1800,
        connect_args={
            **postgres_connect_args(timeout_s),
            "async_creator_fn": DroppedOnCancel.connect,
        },
    )

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _not_pipelined(conn: Any, *_: Any) -> None:
        # SQLAlchemy reads a result as soon as its statement is sent, which pipeline mode
        # does not give it yet: a pipelined unit of work runs store/prepared.py statements.
        if conn.connection.driver_connection.pgconn.pipeline_status != pq.PipelineStatus.OFF:
            raise RuntimeError("a pipelined unit of work ran a statement through SQLAlchemy")

    return engine


def _create_private(database: str | None) -> None:
    """Creates a new SQLite file readable by its owner only: it holds TOTP seeds.

    SQLite gives its -wal and -shm files the database file's mode. An existing file
    keeps its mode; any other failure is left for SQLite to report as it opens the file.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    with contextlib.suppress(OSError):
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_engine(url: URL, timeout_s: float) -> AsyncEngine:
    _create_private(url.database)
    engine = create_async_engine(
        url,
        pool_size=5,
        max_overflow=0,
        pool_timeout=timeout_s,
        connect_args={"timeout": timeout_s},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take transactions out of the driver's hands so BEGIN is ours (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Read-only units run in autocommit (each statement its own snapshot, as under
        # READ COMMITTED on PostgreSQL). Writers take BEGIN IMMEDIATE: SQLite takes the
        # write lock lazily, so a transaction that read first would get SQLITE_BUSY on
        # upgrade instead of waiting its turn.
        if not conn.get_execution_options().get(READONLY, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
