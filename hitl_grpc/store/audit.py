"""The audit trail: appended in the transaction of the change it records, never updated.

Rows are collected and written right before COMMIT, each with the digest of its content;
their place in the tamper-evident chain is given then (store/audit_chain.py).
"""

from __future__ import annotations

from datetime import UTC
from typing import Any, Final

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import AuditQuery
from hitl_grpc.domain.values import AuditOutcome, AuditRecord
from hitl_grpc.store import audit_chain
from hitl_grpc.store.codec import aware, storable
from hitl_grpc.store.prepared import Prepared
from hitl_grpc.store.tables import audit_chain_heads, audit_events

ACTOR_MAX = 150
KIND_MAX = 64
TARGET_MAX = 256
PEER_MAX = 128
REQUEST_ID_MAX: Final = 128
# The columns audit_row() fills; on SQLite the chain's own are added before the write.
_ROW: Final = (
    "time",
    "actor",
    "kind",
    "target",
    "peer",
    "outcome",
    "details",
    "request_id",
    "chain",
    "digest",
)
# Every audited call writes its rows with this (store/prepared.py).
_APPEND: Final = Prepared(insert(audit_events), columns=_ROW)


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
        request_id=row.request_id,
        seq=row.seq or 0,
        digest=row.digest,
        prev_hash=row.prev_hash or "",
        hash=row.hash or "",
    )


def audit_row(record: AuditRecord) -> dict[str, Any]:
    """The row an audit record is stored as, with the digest of its content."""
    row = audit_content(record)
    # The digest covers the row as stored (cut, U+0000 replaced), as verify reads it.
    row["digest"] = audit_chain.content_digest(row)
    return row


def audit_content(record: AuditRecord) -> dict[str, Any]:
    """The columns of an audit record's row but its digest (a statement that stamps the
    time computes that itself, store/hot.py)."""
    return {
        "time": record.time.astimezone(UTC),
        # What an attempt named is recorded even when it held U+0000 (a probe).
        "actor": storable(record.actor[:ACTOR_MAX]),
        "kind": storable(record.kind[:KIND_MAX]),
        "target": storable(record.target[:TARGET_MAX]),
        "peer": storable(record.peer[:PEER_MAX]),
        "outcome": int(record.outcome),
        "details": {storable(k): storable(v) for k, v in record.details.items()},
        "request_id": storable(record.request_id[:REQUEST_ID_MAX]),
        "chain": audit_chain.CHAIN,
    }


class AuditLog:
    """Appends audit rows in the caller's transaction, and reads them back."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._postgres = conn.dialect.name == "postgresql"
        self._pending: list[dict[str, Any]] = []

    async def append(self, record: AuditRecord) -> None:
        """Records one audited action; written at flush(), in this transaction."""
        self._pending.append(audit_row(record))

    async def flush(self) -> None:
        """Writes the collected rows in one statement; the unit of work calls it right
        before COMMIT (on PostgreSQL the COMMIT itself links them into the chain)."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        if not self._postgres:
            await audit_chain.link_in_python(self._conn, rows)
        await _APPEND.many(self._conn, rows)

    async def after(self, seq: int, limit: int) -> list[AuditRecord]:
        """Up to `limit` rows of the chain past `seq`, in chain order (commit order)."""
        t = audit_events
        stmt = (
            select(t)
            .where(t.c.chain == audit_chain.CHAIN, t.c.seq > seq)
            .order_by(t.c.seq)
            .limit(limit)
        )
        return [_record(row) for row in await self._conn.execute(stmt)]

    async def last_seq(self) -> int:
        """The seq of the chain's last committed row (0 for none)."""
        heads = audit_chain_heads
        found = await self._conn.scalar(
            select(heads.c.seq).where(heads.c.chain == audit_chain.CHAIN)
        )
        return int(found or 0)

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
