"""Reading the decision outbox back in order (see store/events.py for why the order holds)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import BindParameter, Select, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.queue import QueueFilter, QueueKey
from hitl_grpc.domain.values import AnalysisId, Decision, Priority
from hitl_grpc.store.codec import decision_from_row, payload_to_row
from hitl_grpc.store.decisions import queue_query
from hitl_grpc.store.door import Door
from hitl_grpc.store.events import row_bytes
from hitl_grpc.store.tables import decision_event_horizon, decision_events, decisions

# Rows fetched from the driver at a time while filling a snapshot page.
_PAGE_FETCH: Final = 16
# A page's row count is bounded too, so tiny rows do not make one page the whole queue.
_PAGE_ROWS_MAX: Final = 500


@dataclass(frozen=True)
class StoredEvent:
    """One outbox row, decoded once per process and shared by every watcher."""

    position: int
    kind: EventKind
    decision: Decision
    # Bytes the event costs a watcher's queue; estimated once, when it was written.
    size: int

    @property
    def analysis_id(self) -> AnalysisId:
        """The decision the event is about."""
        return self.decision.analysis_id

    @property
    def priority(self) -> Priority:
        """The decision's priority (it never changes)."""
        return self.decision.analysis.priority


@dataclass(frozen=True)
class SnapshotPage:
    """Open decisions in queue order, as one statement saw them."""

    decisions: tuple[Decision, ...]
    # Whether the queue may go on after this page.
    more: bool


@dataclass(frozen=True)
class LogBounds:
    """The retained log: events up to `pruned` are gone, `head` is the newest position."""

    pruned: int
    head: int


def _event(row: Any) -> StoredEvent:
    """An event from its row (SQLAlchemy's or psycopg's: both name the columns)."""
    return StoredEvent(
        position=int(row.position),
        kind=EventKind(row.kind),
        decision=decision_from_row(payload_to_row(row.payload)),
        size=int(row.size),
    )


def new_events(
    rows: Iterable[Any], limit: int, budget_bytes: int
) -> tuple[tuple[StoredEvent, ...], bool]:
    """read_new's answer from its rows: the events, and whether more may follow."""
    events = tuple(_event(r) for r in rows)
    more = len(events) == limit or sum(e.size for e in events) >= budget_bytes
    return events, more


def _events_within(
    where: Sequence[Any], limit: int | BindParameter[int], budget_bytes: int | BindParameter[int]
) -> Select[Any]:
    """Events in position order, `limit` at most, and only as far as `budget_bytes` reaches
    (the event that crosses it included, so a read always makes progress).

    One statement: the running total of the stored sizes decides, so a payload is never
    fetched only to be dropped.
    """
    c = decision_events.c
    running = func.sum(c.size).over(order_by=c.position, rows=(None, 0))
    inner = (
        select(c.position, c.kind, c.payload, c.size, running.label("running"))
        .where(*where)
        .order_by(c.position)
        .limit(limit)
        .subquery()
    )
    return (
        select(inner.c.position, inner.c.kind, inner.c.payload, inner.c.size)
        .where(inner.c.running - inner.c.size < budget_bytes)
        .order_by(inner.c.position)
    )


# read_new's statement for psycopg itself: the parameters are after, limit and budget.
NEW_EVENTS_POSTGRES: Final = str(
    _events_within(
        [decision_events.c.position > bindparam("after")], bindparam("limit"), bindparam("budget")
    ).compile(dialect=psycopg_dialect.dialect())  # type: ignore[no-untyped-call]
)

NewEvents = Callable[[int, int, int], Awaitable[tuple[tuple[StoredEvent, ...], bool]]]


class EventStore:
    """Reads the outbox in position order, pages through the open set, prunes."""

    def __init__(self, door: Door, *, hot_new_events: NewEvents | None = None) -> None:
        self._door = door
        self.postgres = door.postgres
        # read_new as one statement through the hot path (store/hot.py), where there is one.
        self._hot_new_events = hot_new_events

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

    async def read_new(
        self, after: int, limit: int, budget_bytes: int
    ) -> tuple[tuple[StoredEvent, ...], bool]:
        """The next committed events after position `after`, in order, within `limit` and
        about `budget_bytes`; and whether more may follow. One statement.

        No horizon to wait for: a position becomes visible only after every lower one
        has (store/events.py), so nothing can still appear behind what this returns.
        """
        if self._hot_new_events is not None:
            return await self._hot_new_events(after, limit, budget_bytes)
        async with self._reading() as conn:
            rows = await conn.execute(
                _events_within([decision_events.c.position > after], limit, budget_bytes)
            )
            return new_events(rows, limit, budget_bytes)

    async def read_range(
        self, after: int, upto: int, limit: int, budget_bytes: int
    ) -> tuple[tuple[StoredEvent, ...], int]:
        """Events in (after, upto], in order, within `limit` and about `budget_bytes`, and
        the pruning horizon read after them."""
        async with self._reading() as conn:
            c = decision_events.c
            rows = await conn.execute(
                _events_within([c.position > after, c.position <= upto], limit, budget_bytes)
            )
            events = tuple(_event(r) for r in rows)
            # Read after the events: a prune that raced the read shows up here.
            pruned = await self._pruned(conn)
        return events, pruned

    async def _pruned(self, conn: AsyncConnection) -> int:
        position = (
            await conn.execute(
                select(decision_event_horizon.c.position).where(decision_event_horizon.c.id == 1)
            )
        ).scalar()
        return int(position or 0)

    async def _head(self, conn: AsyncConnection) -> int:
        # A fully pruned log still ends where the horizon says.
        last = (await conn.execute(select(func.max(decision_events.c.position)))).scalar()
        return max(int(last or 0), await self._pruned(conn))

    async def head(self) -> int:
        """Where a reader starting now begins: after every event already committed."""
        async with self._reading() as conn:
            return await self._head(conn)

    async def bounds(self) -> LogBounds:
        """How far the log has been pruned, and where it ends."""
        async with self._reading(repeatable=True) as conn:
            return LogBounds(await self._pruned(conn), await self._head(conn))

    async def snapshot_page(
        self, after: QueueKey | None, priorities: frozenset[Priority], budget_bytes: int
    ) -> SnapshotPage:
        """Open decisions after `after` in queue order, at most `budget_bytes` of them (but
        always at least one), read by one statement."""
        async with self._reading() as conn:
            found: list[Decision] = []
            used = 0
            more = False
            # Streamed a few rows at a time: a page never holds more than its budget.
            result = await conn.stream(
                queue_query(QueueFilter(priorities), after, _PAGE_ROWS_MAX).execution_options(
                    yield_per=_PAGE_FETCH
                )
            )
            try:
                async for row in result:
                    mapping = dict(row._mapping)
                    size = row_bytes(mapping)
                    if found and used + size > budget_bytes:
                        more = True
                        break
                    found.append(decision_from_row(mapping))
                    used += size
                else:
                    more = len(found) == _PAGE_ROWS_MAX
            finally:
                await result.close()
        return SnapshotPage(tuple(found), more)

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
            # Invisible events are a suffix of the positions (store/events.py), so a
            # prefix up to a visible position never takes one still to be read.
            c = decision_events.c
            upto = (
                await conn.execute(select(func.max(c.position)).where(c.time < cutoff))
            ).scalar()
            if upto is None:
                return 0
            deleted = await conn.execute(decision_events.delete().where(c.position <= upto))
            horizon = decision_event_horizon.c
            await conn.execute(
                update(decision_event_horizon)
                .where(horizon.id == 1, horizon.position < upto)
                .values(position=upto)
            )
            return int(deleted.rowcount or 0)
