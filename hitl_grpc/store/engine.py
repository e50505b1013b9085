"""Engines for the two backends, tuned so that each behaves the same to the repositories."""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

READONLY: Final = "hitl_readonly"


def normalize_url(raw: str) -> URL:
    """Picks the async driver for a plain `sqlite:` or `postgresql:` URL."""
    url = make_url(raw)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def is_postgres(engine: AsyncEngine) -> bool:
    """Whether the engine talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


def make_engine(raw_url: str, *, timeout_s: float, pool_size: int = 10) -> AsyncEngine:
    """An async engine whose connections fail fast instead of hanging."""
    url = normalize_url(raw_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, timeout_s)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout_s,
        # No liveness ping per checkout (two round trips a unit): a connection killed
        # server-side fails its first statement, that unit is UNAVAILABLE (retryable), and
        # SQLAlchemy then invalidates the whole pool. Cancelled units never return theirs.
        pool_recycle=1800,
        connect_args={
            "connect_timeout": max(1, int(timeout_s)),
            "application_name": "hitl-grpc",
            # A runaway statement is ended by the server, not only by our deadline.
            "options": f"-c statement_timeout={int(timeout_s * 1000)}",
        },
    )


def _sqlite_engine(url: URL, timeout_s: float) -> AsyncEngine:
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
