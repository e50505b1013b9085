"""The decision outbox: appending in the writer's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import Decision
from hitl_grpc.store.codec import decision_to_row, row_to_payload
from hitl_grpc.store.tables import decision_events


class EventLog:
    """Appends decision events in the caller's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._postgres = conn.dialect.name == "postgresql"

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
        if self._postgres:
            values["txid"] = text("pg_current_xact_id()::text::bigint")
        await self._conn.execute(insert(decision_events).values(**values))
