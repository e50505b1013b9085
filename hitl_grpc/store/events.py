"""The decision outbox: appending in the writer's transaction, and reading it back in order.

Order. Every event has a `position` (an autoincrement id) and, on PostgreSQL, the `txid`
of the transaction that wrote it. Readers order events by (txid, position) and resume
after the last pair they saw.

- SQLite serializes writers (BEGIN IMMEDIATE), so positions are handed out in commit
  order; txid is NULL (read as 0) and the order is plain position order.
- PostgreSQL hands out sequence values before commit, so position 7 can commit after
  position 8 and a reader of `position > last` would skip it. Instead a reader only takes
  events whose txid is below the xmin of its own snapshot: every transaction below xmin
  has ended, so those events are final, and any event that becomes visible later belongs
  to a transaction at or above that xmin, so it sorts after everything already read.
  xmin never goes backwards, so a (txid, position) cursor never passes an event that can
  still appear. The price: an event waits for every older write transaction in the
  cluster to end (milliseconds, for this service's short transactions).

A snapshot of the open set taken at some MVCC snapshot S reflects exactly the events of
transactions committed before S: those below S.xmin, plus those in [xmin, xmax) that are
not in S's in-progress list (xip). Its cursor therefore carries (xmax, xip) so that
resuming from it skips exactly the events the snapshot already showed.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import insert, literal_column, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningInsert

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import Decision
from hitl_grpc.store.codec import decision_to_row, row_to_payload
from hitl_grpc.store.tables import decision_events

# LISTEN/NOTIFY channel: a wake-up only, its payload is the writer's txid.
NOTIFY_CHANNEL: Final = "hitl_decision_events"
TXID_SQL: Final = "pg_current_xact_id()::text::bigint"


# Built once: SQLAlchemy reuses the compiled statement and only binds the row. On
# PostgreSQL the writer's txid is taken in the INSERT, and the NOTIFY rides on it (no
# extra round trip, delivered at commit; identical payloads in one transaction collapse).
_APPEND_SQLITE = insert(decision_events)
_APPEND_POSTGRES: ReturningInsert[Any] = (
    insert(decision_events)
    .values(txid=text(TXID_SQL))
    .returning(literal_column(f"pg_notify('{NOTIFY_CHANNEL}', txid::text)"))
)


class EventLog:
    """Appends decision events in the caller's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._postgres = conn.dialect.name == "postgresql"
        self.appended = False

    async def append(self, decision: Decision, kind: EventKind) -> None:
        """Records a change; readers see it only once the transaction commits."""
        values: dict[str, Any] = {
            "analysis_id": decision.analysis_id,
            "kind": kind.value,
            "status": int(decision.status),
            "priority": int(decision.analysis.priority),
            "version": decision.version,
            "time": decision.updated_at,
            "payload": row_to_payload(decision_to_row(decision)),
        }
        stmt = _APPEND_POSTGRES if self._postgres else _APPEND_SQLITE
        await self._conn.execute(stmt, values)
        self.appended = True
