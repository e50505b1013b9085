"""Login failure counters in the database, so lockouts hold across replicas and restarts.

Every sign-in runs these statements, so each is compiled once and, on PostgreSQL, sent
through the driver itself (store/prepared.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from sqlalchemy import bindparam, case, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import ThrottleState
from hitl_grpc.store.codec import aware, storable
from hitl_grpc.store.prepared import Prepared
from hitl_grpc.store.tables import login_throttle

_T: Final = login_throttle
_SUBJECT: Final = _T.c.subject == bindparam("b_subject")


def _upserts(*, set_started: bool) -> dict[str, Prepared]:
    """INSERT .. ON CONFLICT DO UPDATE, per dialect: the row created if missing and locked
    until commit. Without `set_started` it returns the row (a lock); with it, it moves the
    window start to now and returns nothing, so a pipelined unit sends it with its COMMIT."""
    built = {}
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite)):
        stmt = dialect.insert(_T).values(
            subject=bindparam("b_subject"),
            failures=0,
            window_started_at=bindparam("b_now"),
            lockouts=0,
        )
        changed = {"subject": stmt.excluded.subject}
        if set_started:
            changed["window_started_at"] = stmt.excluded.window_started_at
        stmt = stmt.on_conflict_do_update(index_elements=["subject"], set_=changed)
        built[name] = Prepared(stmt if set_started else stmt.returning(*_T.c))
    return built


_LOCK: Final = _upserts(set_started=False)
_TOUCH: Final = _upserts(set_started=True)
_SAVE: Final = Prepared(
    update(_T)
    .where(_SUBJECT)
    .values(
        failures=bindparam("b_failures"),
        window_started_at=bindparam("b_started"),
        locked_until=bindparam("b_locked_until"),
        lockouts=bindparam("b_lockouts"),
    )
)
# One fewer in flight, never below zero; a counter that is gone has none to free.
_RELEASE: Final = Prepared(
    update(_T)
    .where(_SUBJECT)
    .values(failures=case((_T.c.failures > 0, _T.c.failures - 1), else_=0))
)
_CLEAR: Final = Prepared(delete(_T).where(_SUBJECT))
# Peeks by how many subjects they read (one for a public limit, three for a sign-in).
_PEEKS: dict[int, Prepared] = {}


def _peek(count: int) -> Prepared:
    found = _PEEKS.get(count)
    if found is None:
        stmt = select(_T).where(_T.c.subject.in_([bindparam(f"s{n}") for n in range(count)]))
        found = _PEEKS[count] = Prepared(stmt)
    return found


def _peek_params(subjects: list[str]) -> dict[str, Any]:
    return {f"s{n}": storable(s) for n, s in enumerate(subjects)}


def _upsert_params(subject: str, now: datetime) -> dict[str, Any]:
    # A probed username may hold U+0000: it is counted under a name PostgreSQL can hold.
    return {"b_subject": storable(subject), "b_now": now}


def _state(row: Any) -> ThrottleState:
    started = aware(row.window_started_at)
    assert started is not None
    return ThrottleState(
        subject=row.subject,
        failures=row.failures,
        window_started_at=started,
        locked_until=aware(row.locked_until),
        lockouts=row.lockouts,
    )


class LoginThrottleRepository:
    """Counters in the caller's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn
        self._dialect = conn.dialect.name

    async def peek(self, subjects: list[str]) -> list[ThrottleState]:
        """The counters of these subjects that exist, without locking them."""
        peeked = await _peek(len(subjects)).rows(self._conn, _peek_params(subjects))
        return [_state(row) for row in peeked]

    async def lock_and_peek(
        self, subject: str, now: datetime, others: list[str]
    ) -> tuple[ThrottleState, list[ThrottleState]]:
        """lock(subject), then peek(others), in one round trip where the unit is pipelined.

        The database still runs them in turn: the peek's snapshot is taken once the lock is
        held, so it sees every change committed by whoever held the lock before.
        """
        locked = await _LOCK[self._dialect].send(self._conn, _upsert_params(subject, now))
        peeked = await _peek(len(others)).send(self._conn, _peek_params(others))
        (row,) = await locked.rows()
        return _state(row), [_state(r) for r in await peeked.rows()]

    async def lock(self, subject: str, now: datetime) -> ThrottleState:
        """The subject's counter, created if missing, its row locked until commit.

        One upsert: INSERT .. ON CONFLICT DO UPDATE .. RETURNING both locks the row and
        returns it. The earlier INSERT .. DO NOTHING then SELECT .. FOR UPDATE let a
        concurrent forgive delete the row between the two statements on PostgreSQL, so the
        SELECT found nothing and the failure was lost.
        """
        (row,) = await _LOCK[self._dialect].rows(self._conn, _upsert_params(subject, now))
        return _state(row)

    async def touch(self, subject: str, now: datetime) -> None:
        """Creates the subject's counter, or moves its window start to `now`: one statement,
        which reads nothing back (in a pipelined unit it goes with the COMMIT)."""
        await _TOUCH[self._dialect].rows(self._conn, _upsert_params(subject, now))

    async def save(self, state: ThrottleState) -> None:
        """Writes a counter back (after lock())."""
        params = {
            "b_subject": storable(state.subject),
            "b_failures": state.failures,
            "b_started": state.window_started_at,
            "b_locked_until": state.locked_until,
            "b_lockouts": state.lockouts,
        }
        await _SAVE.rows(self._conn, params)

    async def release(self, subject: str) -> None:
        """One fewer attempt in flight on an in-flight counter, in one statement."""
        await _RELEASE.rows(self._conn, {"b_subject": storable(subject)})

    async def clear(self, subject: str) -> None:
        """Forgets a subject's failures (after a successful sign-in)."""
        await _CLEAR.rows(self._conn, {"b_subject": storable(subject)})
