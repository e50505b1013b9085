"""The audit trail: appended in the transaction of the change it records, never updated."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.values import AuditRecord
from hitl_grpc.store.tables import audit_events

ACTOR_MAX = 150
TARGET_MAX = 256
PEER_MAX = 128


class AuditLog:
    """Appends audit rows in the caller's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def append(self, record: AuditRecord) -> None:
        """Records one audited action."""
        await self._conn.execute(
            insert(audit_events).values(
                time=record.time,
                actor=record.actor[:ACTOR_MAX],
                kind=record.kind,
                target=record.target[:TARGET_MAX],
                peer=record.peer[:PEER_MAX],
                outcome=int(record.outcome),
                details=dict(record.details),
            )
        )
