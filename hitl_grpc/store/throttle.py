"""Login failure counters in the database, so lockouts hold across replicas and restarts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import ThrottleState
from hitl_grpc.store.codec import aware, storable
from hitl_grpc.store.tables import login_throttle


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

    async def peek(self, subjects: list[str]) -> list[ThrottleState]:
        """The counters of these subjects that exist, without locking them."""
        stmt = select(login_throttle).where(
            login_throttle.c.subject.in_([storable(s) for s in subjects])
        )
        return [_state(row) for row in await self._conn.execute(stmt)]

    async def lock(self, subject: str, now: datetime) -> ThrottleState:
        """The subject's counter, created if missing, its row locked until commit.

        One upsert: INSERT .. ON CONFLICT DO UPDATE .. RETURNING both locks the row and
        returns it. The earlier INSERT .. DO NOTHING then SELECT .. FOR UPDATE let a
        concurrent forgive delete the row between the two statements on PostgreSQL, so the
        SELECT found nothing and the failure was lost.
        """
        # A probed username may hold U+0000: it is counted under a name PostgreSQL can hold.
        subject = storable(subject)
        dialect = postgresql if self._conn.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(login_throttle).values(
            subject=subject, failures=0, window_started_at=now, lockouts=0
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["subject"], set_={"subject": stmt.excluded.subject}
        ).returning(*login_throttle.c)
        return _state((await self._conn.execute(stmt)).one())

    async def save(self, state: ThrottleState) -> None:
        """Writes a counter back (after lock())."""
        await self._conn.execute(
            update(login_throttle)
            .where(login_throttle.c.subject == storable(state.subject))
            .values(
                failures=state.failures,
                window_started_at=state.window_started_at,
                locked_until=state.locked_until,
                lockouts=state.lockouts,
            )
        )

    async def clear(self, subject: str) -> None:
        """Forgets a subject's failures (after a successful sign-in)."""
        await self._conn.execute(
            delete(login_throttle).where(login_throttle.c.subject == storable(subject))
        )
