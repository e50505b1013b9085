"""The decision outbox: appending in the writer's transaction, in an order readers can trust.

Order. Every event has a `position`, and positions become visible in position order, so a
reader resumes with `position > last` and nothing can still appear behind it.

- SQLite serializes writers (BEGIN IMMEDIATE): positions are handed out in commit order.
- PostgreSQL draws positions from a sequence before commit, so on their own two writers
  could commit positions 8 and then 7. So a transaction's events are staged in
  decision_events_staged and published at its COMMIT by a deferred constraint trigger
  (migration 0002): it takes one transaction-scoped advisory lock, then draws the
  positions and moves the rows into decision_events. The holder commits and becomes
  visible to new snapshots before PostgreSQL releases the lock (xact.c CommitTransaction:
  ProcArrayEndTransaction() runs before ResourceOwnerRelease(RESOURCE_RELEASE_LOCKS)); only
  then can the next writer draw higher positions. So every position below a visible one
  is visible or was rolled back. (This needs a sequence that caches no values per
  session, CACHE 1, the default.)

Advisory locks belong to one database: transactions elsewhere in the cluster never wait
on this one, and readers wait on nothing at all. The lock is held only inside the
server's COMMIT processing, never while waiting for a client: a writer cut off before its
COMMIT holds no lock, and a slow link to one replica does not slow the others' commits.
The price: the commits of writing transactions (their publication and WAL flush) run one
at a time per database.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import Decision
from hitl_grpc.store.codec import decision_to_row, row_to_payload
from hitl_grpc.store.tables import decision_events, decision_events_staged

# LISTEN/NOTIFY channel: a wake-up only, without payload, sent by the publishing trigger
# (identical notifications of one transaction collapse into one, delivered at commit).
NOTIFY_CHANNEL: Final = "hitl_decision_events"
# The advisory lock key the publishing trigger takes ("hitl" in ASCII); one key per
# database, since advisory locks are per database.
APPEND_LOCK_KEY: Final = 0x6869746C

# Built once: SQLAlchemy reuses the compiled statements and only binds the rows.
_INSERT: Final = insert(decision_events)
_STAGE: Final = insert(decision_events_staged)


# What a value costs beyond its text: a generous flat figure per field and per row.
_FIELD_OVERHEAD: Final = 16
_ROW_OVERHEAD: Final = 256


def encoded_bytes(value: object) -> int:
    """About how many bytes a value takes on the wire (UTF-8 text plus framing)."""
    if isinstance(value, str):
        return _FIELD_OVERHEAD + (len(value) if value.isascii() else len(value.encode()))
    # Scalars before containers, whose Mapping check is an ABC's, the slowest of these;
    # plain loops rather than sum() over generators: this runs for every event written.
    if value is None or isinstance(value, int | float):
        return _FIELD_OVERHEAD
    total = _FIELD_OVERHEAD
    if isinstance(value, list | tuple):
        for item in value:
            total += encoded_bytes(item)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            total += encoded_bytes(key) + encoded_bytes(item)
    return total


def row_bytes(row: Mapping[str, Any]) -> int:
    """About how many bytes a decision row (or an event's payload) takes on the wire."""
    total = _ROW_OVERHEAD
    for value in row.values():
        total += encoded_bytes(value)
    return total


class EventLog:
    """Collects decision events for the caller's transaction; flush() writes them."""

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
        """Writes the collected events in one statement; the unit of work calls it right
        before COMMIT (on PostgreSQL they are published by the COMMIT itself)."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        await self._conn.execute(_STAGE if self._postgres else _INSERT, rows)
