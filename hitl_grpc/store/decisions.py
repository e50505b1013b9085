"""Decisions: reads, the queue, and every change as one conditional UPDATE ... RETURNING."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from sqlalchemy import (
    ColumnElement,
    Float,
    Interval,
    Select,
    String,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    select,
    text,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain import lifecycle
from hitl_grpc.domain.queue import PageEntry, QueueFilter, QueueKey, QueueStats, WindowStats
from hitl_grpc.domain.values import (
    ActionVerdict,
    Analysis,
    AnalysisId,
    Decision,
    Priority,
    Status,
)
from hitl_grpc.store.codec import (
    analysis_to_row,
    decision_from_row,
    decision_to_row,
    verdicts_to_json,
)
from hitl_grpc.store.tables import TIME, decisions

# Lifecycle columns: what a transition may change. The analysis itself never changes.
_LIFECYCLE_COLUMNS: Final = (
    "status",
    "version",
    "updated_at",
    "claimed_by",
    "claim_expires_at",
    "resolution_status",
    "approved_actions",
    "notes",
    "escalation_reason",
    "decided_by",
    "decided_at",
    "lease_id",
    "lease_epoch",
    "action_verdicts",
)


def _status_in(statuses: frozenset[Status]) -> ColumnElement[bool]:
    # Literal numbers, not bound parameters: the partial indexes' predicates must be
    # provable from the query text, which a prepared (generic) plan can't do with $1.
    numbers = ", ".join(str(int(s)) for s in sorted(statuses))
    return text(f"decisions.status IN ({numbers})")  # type: ignore[return-value]


_OPEN: Final = _status_in(lifecycle.OPEN)
_WORKABLE: Final = _status_in(lifecycle.WORKABLE)


# SQLite keeps times as text in SQLAlchemy's own format ("2026-01-02 03:04:05.678901"),
# so its clock is rendered the same way and compares, sorts and parses like a stored
# time. ('now' is fixed for one statement, at millisecond resolution.)
_SQLITE_NOW: Final = "%Y-%m-%d %H:%M:%f000"


def _database_clock(postgres: bool, offset: Any = None) -> ColumnElement[datetime]:
    """The database's current time, plus an optional offset bound by _clock_offset.

    PostgreSQL's now() is the transaction's start: every time one unit of work writes
    is the same instant, on the database's clock, whichever replica runs it.
    """
    if postgres:
        now: ColumnElement[datetime] = func.now(type_=TIME)
        return now if offset is None else type_coerce(now + offset, TIME)
    modifiers = ["now"] if offset is None else ["now", offset]
    return func.strftime(_SQLITE_NOW, *modifiers, type_=TIME)


def _clock_offset(postgres: bool, name: str) -> Any:
    """A bound parameter for an offset to the database's clock (see _offset_value)."""
    return bindparam(name, type_=Interval() if postgres else String())


def _offset_value(postgres: bool, delta: timedelta) -> object:
    """An offset in the form its backend adds to a time: an interval, or a modifier."""
    return delta if postgres else f"{delta.total_seconds():+.6f} seconds"


def _utc(value: Any) -> datetime:
    assert isinstance(value, datetime), "the database clock returned no time"
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _duration_s(conn: AsyncConnection) -> ColumnElement[Any]:
    """Seconds from submission to verdict, computed by the database."""
    c = decisions.c
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", c.decided_at - c.created_at)
    return (func.julianday(c.decided_at) - func.julianday(c.created_at)) * literal_column(
        "86400.0", Float
    )


def _decision(row: Row[Any]) -> Decision:
    return decision_from_row(cast("Mapping[str, Any]", row._mapping))


def queue_query(
    queue_filter: QueueFilter, after: QueueKey | None, limit: int, *columns: Any
) -> Select[Any]:
    """The page query: open rows in (priority, created_at, analysis_id) order, after a key.

    Its WHERE repeats ix_decisions_queue's predicate literally and its ORDER BY is the
    index's, so both backends walk the index and stop after `limit` rows. Whole rows,
    unless `columns` names the ones to read.
    """
    c = decisions.c
    stmt = select(*columns) if columns else select(decisions)
    stmt = stmt.where(_OPEN)
    if queue_filter.priorities:
        stmt = stmt.where(c.priority.in_(sorted(int(p) for p in queue_filter.priorities)))
    if queue_filter.statuses:
        stmt = stmt.where(c.status.in_(sorted(int(s) for s in queue_filter.statuses)))
    if after is not None:
        stmt = stmt.where(
            tuple_(c.priority, c.created_at, c.analysis_id)
            > tuple_(
                bindparam("after_p", int(after.priority), type_=c.priority.type),
                bindparam("after_c", after.created_at, type_=TIME),
                bindparam("after_i", after.analysis_id, type_=c.analysis_id.type),
            )
        )
    return stmt.order_by(c.priority, c.created_at, c.analysis_id).limit(limit)


_DB_NOW: Final = "db_now"


def _insert(postgres: bool) -> Any:
    # The times are the database's, written by the INSERT itself: a submit stays one
    # round trip however many replicas (with whatever clocks) submit.
    dialect_insert = postgresql.insert if postgres else sqlite.insert
    now = _database_clock(postgres)
    return (
        dialect_insert(decisions)
        .values(
            created_at=now,
            updated_at=now,
            sla_deadline=_database_clock(postgres, _clock_offset(postgres, "sla")),
        )
        .on_conflict_do_nothing(index_elements=[decisions.c.analysis_id])
        .returning(decisions.c.created_at, decisions.c.sla_deadline)
    )


# Built once per dialect: SQLAlchemy reuses the compiled INSERT and only binds the row.
# ON CONFLICT DO NOTHING: concurrent identical submits wait on the key, then one inserts
# and the others see the committed row, with no error to retry.
_INSERT = {"postgresql": _insert(True), "sqlite": _insert(False)}


class DecisionRepository:
    """Decisions, read and written in the caller's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._postgres = conn.dialect.name == "postgresql"

    async def insert(
        self,
        analysis: Analysis,
        payload_hash: str,
        *,
        submitted_by: str,
        sla: timedelta,
        action_verdicts: tuple[ActionVerdict, ...] = (),
    ) -> Decision | None:
        """Queues a new PENDING decision on the database's clock; None if the id is taken."""
        values = {
            **analysis_to_row(analysis),
            "payload_hash": payload_hash,
            "submitted_by": submitted_by,
            "status": int(Status.PENDING),
            "version": 1,
            "sla": _offset_value(self._postgres, sla),
            "lease_epoch": 0,
            "action_verdicts": verdicts_to_json(action_verdicts) if action_verdicts else None,
        }
        stamped = (await self._conn.execute(_INSERT[self._conn.dialect.name], values)).first()
        if stamped is None:
            return None
        created_at = _utc(stamped.created_at)
        return Decision(
            analysis=analysis,
            status=Status.PENDING,
            version=1,
            created_at=created_at,
            updated_at=created_at,
            sla_deadline=_utc(stamped.sla_deadline),
            submitted_by=submitted_by,
            action_verdicts=action_verdicts,
        )

    async def now(self) -> datetime:
        """The database's current time."""
        return _utc((await self._conn.execute(select(_database_clock(self._postgres)))).scalar())

    async def get_with_now(self, analysis_id: AnalysisId) -> tuple[Decision, datetime] | None:
        """One decision and the database's current time, read in one statement."""
        row = (
            await self._conn.execute(
                select(decisions, _database_clock(self._postgres).label(_DB_NOW)).where(
                    decisions.c.analysis_id == analysis_id
                )
            )
        ).one_or_none()
        return (_decision(row), _utc(row.db_now)) if row else None

    async def get(self, analysis_id: AnalysisId) -> Decision | None:
        """One decision, or None."""
        row = (
            await self._conn.execute(
                select(decisions).where(decisions.c.analysis_id == analysis_id)
            )
        ).one_or_none()
        return _decision(row) if row else None

    async def get_with_hash(self, analysis_id: AnalysisId) -> tuple[Decision, str] | None:
        """One decision and the hash of the payload it was submitted with."""
        row = (
            await self._conn.execute(
                select(decisions).where(decisions.c.analysis_id == analysis_id)
            )
        ).one_or_none()
        return (_decision(row), row.payload_hash) if row else None

    async def replace(
        self, before: Decision, after: Decision, *, sla_breached: bool = False
    ) -> Decision | None:
        """Writes `after` only if the row is still at `before`'s status and version."""
        row = decision_to_row(after)
        values: dict[str, Any] = {name: row[name] for name in _LIFECYCLE_COLUMNS}
        if sla_breached:
            values["sla_breached"] = True
        stmt = (
            update(decisions)
            .where(
                decisions.c.analysis_id == before.analysis_id,
                decisions.c.status == int(before.status),
                decisions.c.version == before.version,
            )
            .values(**values)
            .returning(*decisions.c)
        )
        result = (await self._conn.execute(stmt)).one_or_none()
        return _decision(result) if result else None

    async def list_open(
        self, queue_filter: QueueFilter, after: QueueKey | None, limit: int
    ) -> list[Decision]:
        """Open decisions in queue order, strictly after `after`."""
        rows = (await self._conn.execute(queue_query(queue_filter, after, limit))).all()
        return [_decision(r) for r in rows]

    async def open_keys(
        self, queue_filter: QueueFilter, after: QueueKey | None, limit: int
    ) -> list[PageEntry]:
        """list_open's decisions as their versions and places only."""
        c = decisions.c
        query = queue_query(
            queue_filter, after, limit, c.analysis_id, c.version, c.priority, c.created_at
        )
        rows = (await self._conn.execute(query)).all()
        return [PageEntry(r.analysis_id, r.version, r.priority, _utc(r.created_at)) for r in rows]

    async def _due(
        self,
        condition: Callable[[ColumnElement[datetime]], ColumnElement[bool]],
        order: Any,
        limit: int,
    ) -> list[tuple[Decision, datetime]]:
        # Due by the database's clock, never a replica's. FOR UPDATE SKIP LOCKED: rows
        # another replica's sweep holds are left to it, so replicas split the work
        # instead of queueing behind each other's locks (SQLite has one writer at a
        # time anyway, and renders no locking clause).
        now = _database_clock(self._postgres)
        stmt = (
            select(decisions, now.label(_DB_NOW))
            .where(condition(now))
            .order_by(order, decisions.c.analysis_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (await self._conn.execute(stmt)).all()
        return [(_decision(r), _utc(r.db_now)) for r in rows]

    async def expired(self, limit: int) -> list[tuple[Decision, datetime]]:
        """Open decisions past their expires_at, each with the time it was found due."""
        c = decisions.c
        return await self._due(
            lambda now: and_(_OPEN, c.expires_at.is_not(None), c.expires_at <= now),
            c.expires_at,
            limit,
        )

    async def overdue(self, limit: int) -> list[tuple[Decision, datetime]]:
        """PENDING or IN_REVIEW decisions past their SLA deadline."""
        c = decisions.c
        return await self._due(
            lambda now: and_(_WORKABLE, c.sla_deadline <= now), c.sla_deadline, limit
        )

    async def lapsed_leases(self, limit: int) -> list[tuple[Decision, datetime]]:
        """IN_REVIEW decisions whose lease ran out."""
        c = decisions.c
        # _WORKABLE matches ix_decisions_open_sla's predicate, so this scans only open rows.
        return await self._due(
            lambda now: and_(
                _WORKABLE,
                c.status == int(Status.IN_REVIEW),
                c.claim_expires_at <= now,
            ),
            c.claim_expires_at,
            limit,
        )

    async def held_leases(
        self, username: str, within: timedelta, limit: int
    ) -> list[tuple[Decision, datetime]]:
        """Live leases held by `username` that run out within `within` of the database's now."""
        c = decisions.c
        now = _database_clock(self._postgres)
        soon = _database_clock(self._postgres, _clock_offset(self._postgres, "within"))
        # _WORKABLE matches ix_decisions_open_sla's predicate: only open rows are scanned.
        stmt = (
            select(decisions, now.label(_DB_NOW))
            .where(
                _WORKABLE,
                c.status == int(Status.IN_REVIEW),
                c.claimed_by == username,
                c.claim_expires_at > now,
                c.claim_expires_at <= soon,
            )
            .order_by(c.claim_expires_at, c.analysis_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        rows = (
            await self._conn.execute(stmt, {"within": _offset_value(self._postgres, within)})
        ).all()
        return [(_decision(r), _utc(r.db_now)) for r in rows]

    async def stats(self) -> QueueStats:
        """Counts and times to decision, aggregated by the database."""
        c = decisions.c
        open_rows = (
            await self._conn.execute(
                select(c.status, c.priority, func.count(), func.min(c.created_at))
                .where(_OPEN)
                .group_by(c.status, c.priority)
            )
        ).all()
        by_status: dict[int, int] = {}
        pending_by_priority = {p: 0 for p in Priority}
        oldest: datetime | None = None
        for status, priority, count, first in open_rows:
            by_status[status] = by_status.get(status, 0) + count
            if status == Status.PENDING:
                pending_by_priority[Priority(priority)] = count
            oldest = _utc(first) if oldest is None else min(oldest, _utc(first))
        return QueueStats(
            oldest_open_age=None
            if oldest is None
            else max(timedelta(0), await self.now() - oldest),
            pending_by_priority=pending_by_priority,
            pending=by_status.get(Status.PENDING, 0),
            in_review=by_status.get(Status.IN_REVIEW, 0),
            escalated=by_status.get(Status.ESCALATED, 0),
            last_24h=await self._window(timedelta(hours=24)),
            all_time=await self._window(None),
        )

    async def _window(self, last: timedelta | None) -> WindowStats:
        """Counts over the `last` span up to the database's now, or over all time."""
        c = decisions.c

        def count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        counts = select(
            func.count(),
            count_if(c.status == int(Status.APPROVED)),
            count_if(c.status == int(Status.REJECTED)),
            # Ever escalated, by hand or by SLA: the reason outlives the escalated state.
            count_if(and_(c.escalation_reason.is_not(None), c.escalation_reason != "")),
            count_if(c.status == int(Status.EXPIRED)),
            count_if(c.sla_breached.is_(True)),
        )
        start = None
        if last is not None:
            start = _database_clock(self._postgres, _clock_offset(self._postgres, "since"))
            counts = counts.where(c.created_at >= start)
        params = {} if last is None else {"since": _offset_value(self._postgres, -last)}
        submitted, approved, rejected, escalated, expired, breaches = (
            await self._conn.execute(counts, params)
        ).one()

        duration = _duration_s(self._conn)
        verdict = c.status.in_(sorted(int(s) for s in lifecycle.VERDICTS))
        ranked = select(
            duration.label("d"),
            func.row_number().over(order_by=duration).label("rn"),
            func.count().over().label("n"),
        ).where(verdict, c.decided_at.is_not(None))
        if start is not None:
            ranked = ranked.where(c.decided_at >= start)
        r = ranked.subquery()

        def nearest_rank(numerator: int, denominator: int) -> ColumnElement[Any]:
            # The nearest-rank percentile: the smallest value at rank >= ceil(p * n),
            # with integer arithmetic so both backends agree to the row.
            rank = (r.c.n * numerator + denominator - 1) // denominator
            return func.min(case((r.c.rn >= rank, r.c.d)))

        decided, avg_s, p50_s, p90_s = (
            await self._conn.execute(
                select(func.count(), func.avg(r.c.d), nearest_rank(1, 2), nearest_rank(9, 10)),
                params,
            )
        ).one()

        def seconds(value: Any) -> timedelta | None:
            return None if value is None else timedelta(seconds=float(value))

        return WindowStats(
            submitted=int(submitted),
            approved=int(approved),
            rejected=int(rejected),
            escalated=int(escalated),
            expired=int(expired),
            decided=int(decided),
            avg_time_to_decision=seconds(avg_s),
            p50_time_to_decision=seconds(p50_s),
            p90_time_to_decision=seconds(p90_s),
            sla_breaches=int(breaches),
        )
