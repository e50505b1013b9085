"""The audit trail: appended in the transaction of the change it records, never updated."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import AuditQuery
from hitl_grpc.domain.values import AuditOutcome, AuditRecord
from hitl_grpc.store.codec import aware, storable
from hitl_grpc.store.tables import audit_events

ACTOR_MAX = 150
KIND_MAX = 64
TARGET_MAX = 256
PEER_MAX = 128
# Built once: SQLAlchemy reuses the compiled statement and only binds the row.
_APPEND = insert(audit_events)


def _record(row: Any) -> AuditRecord:
    time = aware(row.time)
    assert time is not None
    return AuditRecord(
        id=row.id,
        time=time,
        actor=row.actor,
        kind=row.kind,
        target=row.target,
        peer=row.peer,
        outcome=AuditOutcome(row.outcome),
        details={str(k): str(v) for k, v in (row.details or {}).items()},
    )


class AuditLog:
    """Appends audit rows in the caller's transaction, and reads them back."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def append(self, record: AuditRecord) -> None:
        """Records one audited action."""
        await self._conn.execute(
            _APPEND,
            {
                "time": record.time,
                # What an attempt named is recorded even when it held U+0000 (a probe).
                "actor": storable(record.actor[:ACTOR_MAX]),
                "kind": storable(record.kind[:KIND_MAX]),
                "target": storable(record.target[:TARGET_MAX]),
                "peer": storable(record.peer[:PEER_MAX]),
                "outcome": int(record.outcome),
                "details": {storable(k): storable(v) for k, v in record.details.items()},
            },
        )

    async def query(self, query: AuditQuery) -> list[AuditRecord]:
        """A page of matching events, newest (highest id) first."""
        t = audit_events
        stmt = select(t).order_by(t.c.id.desc()).limit(query.limit)
        if query.actor:
            stmt = stmt.where(t.c.actor == query.actor[:ACTOR_MAX])
        if query.kind:
            stmt = stmt.where(t.c.kind == query.kind[:KIND_MAX])
        if query.target:
            stmt = stmt.where(t.c.target == query.target[:TARGET_MAX])
        if query.since is not None:
            stmt = stmt.where(t.c.time >= query.since)
        if query.until is not None:
            stmt = stmt.where(t.c.time < query.until)
        if query.before_id is not None:
            stmt = stmt.where(t.c.id < query.before_id)
        return [_record(row) for row in await self._conn.execute(stmt)]
