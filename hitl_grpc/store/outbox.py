"""Reading the decision outbox back in order (see store/events.py for why the order holds)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, literal, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import AnalysisId, Decision, Priority, Status
from hitl_grpc.store.codec import decision_from_row, payload_to_row
from hitl_grpc.store.door import Door
from hitl_grpc.store.tables import decision_event_horizon, decision_events, decisions

OPEN_STATUSES: Final = (Status.PENDING, Status.IN_REVIEW, Status.ESCALATED)
XMIN_SQL: Final = "pg_snapshot_xmin(pg_current_snapshot())::text::bigint"

# (txid, position): the order events are read and resumed in; txid is 0 on SQLite.
EventPosition = tuple[int, int]


@dataclass(frozen=True)
class StoredEvent:
    """One outbox row, decoded once per process and shared by every watcher."""

    txid: int
    position: int
    kind: EventKind
    decision: Decision

    @property
    def key(self) -> EventPosition:
        """Where the event sorts in the log."""
        return (self.txid, self.position)

    @property
    def analysis_id(self) -> AnalysisId:
        """The decision the event is about."""
        return self.decision.analysis_id

    @property
    def priority(self) -> Priority:
        """The decision's priority (it never changes)."""
        return self.decision.analysis.priority


@dataclass(frozen=True)
class Snapshot:
    """The open set as of one MVCC snapshot, and what that snapshot had seen of the log."""

    decisions: tuple[Decision, ...]
    after: EventPosition
    # PostgreSQL: events with after[0] <= txid < xmax and txid not in xip were already
    # visible to the snapshot. 0 and () on SQLite, where `after` alone is exact.
    xmax: int
    xip: tuple[int, ...]


@dataclass(frozen=True)
class ReadBatch:
    """What one read of the log returned."""

    events: tuple[StoredEvent, ...]
    # PostgreSQL: the horizon the read was below; events of txids >= it are held back.
    xmin: int


def _event(row: Any) -> StoredEvent:
    m = row._mapping
    return StoredEvent(
        txid=int(m["txid"] or 0),
        position=int(m["position"]),
        kind=EventKind(m["kind"]),
        decision=decision_from_row(payload_to_row(m["payload"])),
    )


_EVENT_COLUMNS = (
    decision_events.c.txid,
    decision_events.c.position,
    decision_events.c.kind,
    decision_events.c.payload,
)


class EventStore:
    """Reads the outbox in (txid, position) order, snapshots the open set, prunes."""

    def __init__(self, door: Door) -> None:
        self._door = door
        self.postgres = door.postgres

    @asynccontextmanager
    async def _reading(self, *, repeatable: bool = False) -> AsyncIterator[AsyncConnection]:
        isolation = "REPEATABLE READ" if repeatable else "READ COMMITTED"
        async with self._door.passage(readonly=True, isolation=isolation) as passage:
            yield passage.connection

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        async with self._door.passage() as passage:
            yield passage.connection
            await passage.commit()

    def _after(self, after: EventPosition) -> Any:
        if self.postgres:
            return tuple_(decision_events.c.txid, decision_events.c.position) > tuple_(
                literal(after[0]), literal(after[1])
            )
        return decision_events.c.position > after[1]

    def _upto(self, upto: EventPosition) -> Any:
        if self.postgres:
            return tuple_(decision_events.c.txid, decision_events.c.position) <= tuple_(
                literal(upto[0]), literal(upto[1])
            )
        return decision_events.c.position <= upto[1]

    def _order(self) -> Sequence[Any]:
        if self.postgres:
            return (decision_events.c.txid, decision_events.c.position)
        return (decision_events.c.position,)

    async def read_new(self, after: EventPosition, limit: int) -> ReadBatch:
        """The next committed events after `after`, in order; one statement."""
        async with self._reading() as conn:
            if not self.postgres:
                rows = await conn.execute(
                    select(*_EVENT_COLUMNS)
                    .where(self._after(after))
                    .order_by(*self._order())
                    .limit(limit)
                )
                return ReadBatch(tuple(_event(r) for r in rows), 0)
            rows = await conn.execute(
                text(
                    "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                    " AS xmin) "
                    "SELECT h.xmin, e.txid, e.position, e.kind, e.payload FROM h "
                    "LEFT JOIN LATERAL (SELECT txid, position, kind, payload"
                    " FROM decision_events WHERE (txid, position) > (:t, :p)"
                    " AND txid < h.xmin ORDER BY txid, position LIMIT :n) e ON true"
                ),
                {"t": after[0], "p": after[1], "n": limit},
            )
            found = rows.all()
            xmin = int(found[0]._mapping["xmin"])
            return ReadBatch(
                tuple(_event(r) for r in found if r._mapping["position"] is not None), xmin
            )

    async def read_range(
        self, after: EventPosition, upto: EventPosition, limit: int
    ) -> tuple[tuple[StoredEvent, ...], EventPosition]:
        """Events in (after, upto], in order, and the pruning horizon read after them."""
        async with self._reading() as conn:
            rows = await conn.execute(
                select(*_EVENT_COLUMNS)
                .where(self._after(after), self._upto(upto))
                .order_by(*self._order())
                .limit(limit)
            )
            events = tuple(_event(r) for r in rows)
            # Read after the events: a prune that raced the read shows up here.
            horizon = await self._horizon(conn)
        return events, horizon

    async def _horizon(self, conn: AsyncConnection) -> EventPosition:
        row = (
            await conn.execute(
                select(decision_event_horizon.c.txid, decision_event_horizon.c.position).where(
                    decision_event_horizon.c.id == 1
                )
            )
        ).one_or_none()
        return (int(row.txid), int(row.position)) if row else (0, 0)

    async def head(self) -> EventPosition:
        """Where a reader starting now begins: after every event already committed."""
        async with self._reading() as conn:
            if self.postgres:
                row = (
                    await conn.execute(
                        text(
                            "SELECT txid, position FROM decision_events"
                            " WHERE txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
                            " ORDER BY txid DESC, position DESC LIMIT 1"
                        )
                    )
                ).one_or_none()
                return (int(row.txid), int(row.position)) if row else (0, 0)
            last = (await conn.execute(select(func.max(decision_events.c.position)))).scalar()
            return (0, int(last or 0))

    async def snapshot(self) -> Snapshot:
        """The open set (queue order) and the log position it reflects, from one snapshot."""
        async with self._reading(repeatable=True) as conn:
            xmax: int = 0
            xip: tuple[int, ...] = ()
            if self.postgres:
                row = (
                    await conn.execute(
                        text(
                            "SELECT pg_snapshot_xmin(s)::text::bigint AS xmin,"
                            " pg_snapshot_xmax(s)::text::bigint AS xmax,"
                            " ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) x) AS xip"
                            " FROM pg_current_snapshot() s"
                        )
                    )
                ).one()
                after: EventPosition = (int(row.xmin), 0)
                xmax, xip = int(row.xmax), tuple(sorted(int(x) for x in row.xip))
            else:
                last = (await conn.execute(select(func.max(decision_events.c.position)))).scalar()
                after = (0, int(last or 0))
            rows = await conn.execute(
                select(decisions)
                .where(decisions.c.status.in_([int(s) for s in OPEN_STATUSES]))
                .order_by(decisions.c.priority, decisions.c.created_at, decisions.c.analysis_id)
            )
            found = tuple(decision_from_row(dict(r._mapping)) for r in rows)
        return Snapshot(found, after, xmax, xip)

    async def decision(self, analysis_id: AnalysisId) -> Decision | None:
        """One decision's current state."""
        async with self._reading() as conn:
            row = (
                await conn.execute(select(decisions).where(decisions.c.analysis_id == analysis_id))
            ).one_or_none()
        return decision_from_row(dict(row._mapping)) if row else None

    async def prune(self, cutoff: datetime) -> int:
        """Deletes the prefix of the log older than `cutoff`; records how far it went."""
        async with self._writing() as conn:
            stmt = select(decision_events.c.txid, decision_events.c.position).where(
                decision_events.c.time < cutoff
            )
            if self.postgres:
                stmt = stmt.where(decision_events.c.txid < text(XMIN_SQL))
            order = [c.desc() for c in self._order()]
            row = (await conn.execute(stmt.order_by(*order).limit(1))).one_or_none()
            if row is None:
                return 0
            upto: EventPosition = (int(row.txid or 0), int(row.position))
            deleted = await conn.execute(decision_events.delete().where(self._upto(upto)))
            horizon = decision_event_horizon.c
            await conn.execute(
                update(decision_event_horizon)
                .where(
                    horizon.id == 1,
                    tuple_(horizon.txid, horizon.position)
                    < tuple_(literal(upto[0]), literal(upto[1])),
                )
                .values(txid=upto[0], position=upto[1])
            )
            return int(deleted.rowcount or 0)
