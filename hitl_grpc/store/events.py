"""The decision outbox: appending in the writer's transaction, in an order readers can trust.

Order. Every event has a `position`, and positions become visible in position order, so a
reader resumes with `position > last` and nothing can still appear behind it.

- SQLite serializes writers (BEGIN IMMEDIATE): positions are handed out in commit order.
- PostgreSQL draws positions from a sequence before commit, so on their own two writers
  could commit positions 8 and then 7. Every transaction that appends therefore takes one
  transaction-scoped advisory lock right before drawing its positions, as its last
  statements before COMMIT (the events are buffered until then). A lock holder draws its
  positions, commits and becomes visible to new snapshots before PostgreSQL releases the
  lock (xact.c CommitTransaction: ProcArrayEndTransaction() runs before
  ResourceOwnerRelease(RESOURCE_RELEASE_LOCKS)); only then can the next writer draw higher
  positions. So every position below a visible one is visible or was rolled back. (This
  needs a sequence that caches no values per session, CACHE 1, the default.)

Advisory locks belong to one database: transactions elsewhere in the cluster never wait
on this one, and readers wait on nothing at all. The price is that the appending tail of
each writing transaction (lock, INSERT, COMMIT) runs one at a time per database, and a
writer stranded while holding the lock stalls the others until PostgreSQL ends its
session (idle_in_transaction_session_timeout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import Decision
from hitl_grpc.store.codec import decision_to_row, row_to_payload
from hitl_grpc.store.tables import decision_events

# LISTEN/NOTIFY channel: a wake-up only, without payload (identical notifications of one
# transaction collapse into one, delivered at commit).
NOTIFY_CHANNEL: Final = "hitl_decision_events"
# The advisory lock key every appending transaction takes ("hitl" in ASCII); one key per
# database, since advisory locks are per database.
APPEND_LOCK_KEY: Final = 0x6869746C

# Built once: SQLAlchemy reuses the compiled statements and only binds the rows. The NOTIFY
# rides on the lock statement, so serializing costs one round trip per transaction.
_INSERT: Final = insert(decision_events)
_LOCK_AND_NOTIFY: Final = text(
    f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY}), pg_notify('{NOTIFY_CHANNEL}', '')"
)


# What a value costs beyond its text: a generous flat figure per field and per row.
_FIELD_OVERHEAD: Final = 16
_ROW_OVERHEAD: Final = 256


def encoded_bytes(value: object) -> int:
    """About how many bytes a value takes on the wire (UTF-8 text plus framing)."""
    if isinstance(value, str):
        return _FIELD_OVERHEAD + (len(value) if value.isascii() else len(value.encode()))
    if isinstance(value, Mapping):
        return _FIELD_OVERHEAD + sum(encoded_bytes(k) + encoded_bytes(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return _FIELD_OVERHEAD + sum(encoded_bytes(v) for v in value)
    return _FIELD_OVERHEAD


def row_bytes(row: Mapping[str, Any]) -> int:
    """About how many bytes a decision row (or an event's payload) takes on the wire."""
    return _ROW_OVERHEAD + sum(encoded_bytes(v) for v in row.values())


class EventLog:
    """Collects decision events for the caller's transaction; flush() writes them last."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._postgres = conn.dialect.name == "postgresql"
        self._pending: list[dict[str, Any]] = []
        self.appended = False

    async def append(self, decision: Decision, kind: EventKind) -> None:
        """Records a change; written at flush() and seen by readers once committed."""
        payload = row_to_payload(decision_to_row(decision))
        self._pending.append(
            {
                "analysis_id": decision.analysis_id,
                "kind": kind.value,
                "status": int(decision.status),
                "priority": int(decision.analysis.priority),
                "version": decision.version,
                "time": decision.updated_at,
                "payload": payload,
                "size": row_bytes(payload),
            }
        )
        self.appended = True

    async def flush(self) -> None:
        """Writes the collected events; the unit of work calls it right before COMMIT."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        if self._postgres:
            await self._conn.execute(_LOCK_AND_NOTIFY)
        await self._conn.execute(_INSERT, rows)
