"""Statements sent by the driver itself, and pipelined units of work (store/prepared.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError

from hitl_grpc.domain.ports import ThrottleState
from tests.conftest import PG_ADMIN_URL
from tests.decisions_support import wait_until
from tests.harness import Harness
from tests.signin import add_orphan_refresh_token

SUBJECT = "user:pipelined"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def _peek(server: Harness) -> list[ThrottleState]:
    async with server.running.uow(readonly=True) as uow:
        return await uow.throttle.peek([SUBJECT])


async def test_a_queued_write_is_seen_by_the_next_read_and_lands_with_the_commit(
    server: Harness,
) -> None:
    now = _now()
    async with server.running.uow(pipelined=True) as uow:
        state = await uow.throttle.lock(SUBJECT, now)
        await uow.throttle.save(ThrottleState(SUBJECT, 3, now, None, 1))
        # The save returned nothing and may still be queued: the read goes after it.
        (seen,) = await uow.throttle.peek([SUBJECT])
        assert (seen.failures, seen.lockouts) == (3, 1)
        await uow.throttle.release(SUBJECT)
        await uow.commit()
    assert state.failures == 0
    (after,) = await _peek(server)
    assert (after.failures, after.lockouts) == (2, 1)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_peek_sent_with_a_lock_sees_what_the_holder_of_the_lock_committed(
    server: Harness,
) -> None:
    """lock_and_peek sends both statements at once; the peek still runs after the lock."""
    now = _now()
    busy = "busy:" + SUBJECT
    async with server.running.uow() as holder:
        await holder.throttle.lock(busy, now)
        # A counter the waiter's snapshot would miss had it been taken before the lock.
        await holder.throttle.lock(SUBJECT, now)
        await holder.throttle.save(ThrottleState(SUBJECT, 4, now, None, 0))

        async def waiter() -> list[ThrottleState]:
            async with server.running.uow(pipelined=True) as uow:
                _, peeked = await uow.throttle.lock_and_peek(busy, now, [SUBJECT])
                await uow.commit()
                return peeked

        waiting = asyncio.create_task(waiter())
        database = server.running.settings.database_url.rsplit("/", 1)[1]
        async with await psycopg.AsyncConnection.connect(
            PG_ADMIN_URL, autocommit=True, connect_timeout=5
        ) as admin:

            async def blocked() -> bool:
                cur = await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock'",
                    (database,),
                )
                return await cur.fetchone() == (1,)

            await wait_until(blocked)
        assert not waiting.done()
        await holder.commit()
    (seen,) = await asyncio.wait_for(waiting, 10)
    assert seen.failures == 4


async def test_a_failing_queued_write_fails_the_commit_and_leaves_nothing(
    server: Harness,
) -> None:
    now = _now()

    async def doomed() -> None:
        async with server.running.uow(pipelined=True) as uow:
            await uow.throttle.lock(SUBJECT, now)
            # Refused by the foreign key, at the COMMIT at the latest.
            await add_orphan_refresh_token(uow)
            await uow.commit()

    with pytest.raises(IntegrityError):
        await doomed()
    assert await _peek(server) == []
    # The connection it ran on was not handed on broken: the next units work.
    async with server.running.uow(pipelined=True) as uow:
        await uow.throttle.touch(SUBJECT, now)
        await uow.commit()
    assert [s.subject for s in await _peek(server)] == [SUBJECT]


async def test_queued_writes_left_without_a_commit_are_rolled_back(server: Harness) -> None:
    async with server.running.uow(pipelined=True) as uow:
        await uow.throttle.touch(SUBJECT, _now())
        await uow.throttle.release(SUBJECT)
    assert await _peek(server) == []


async def test_a_pipelined_unit_refuses_statements_it_would_read_wrong(
    backend: str, server: Harness
) -> None:
    async with server.running.uow(pipelined=True) as uow:
        if backend == "postgres":
            # SQLAlchemy would read no rows from a statement still queued: it is refused.
            with pytest.raises(RuntimeError, match="pipelined"):
                await uow.users.list_page(None, 10)
        else:
            assert [a.user.username for a in await uow.users.list_page(None, 10)] == ["admin"]
