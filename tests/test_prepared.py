"""Statements sent by the driver itself, and pipelined units of work (store/prepared.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.exc import IntegrityError

from hitl_grpc.domain.ports import ThrottleState
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
