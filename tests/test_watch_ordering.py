"""The event log's order: nothing is skipped or repeated when commits race."""

from __future__ import annotations

import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import Role
from tests.harness import Harness
from tests.watching import event_of, hand_decision, hub_of, next_of, take, until_live


@pytest.mark.parametrize("backend", ["postgres"])
async def test_out_of_order_commits_are_each_seen_once(server: Harness) -> None:
    # SQLite serializes writers, so its positions are commit order by construction.
    analyst = await server.as_role(Role.ANALYST)
    stream = aiter(
        server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
    )
    await until_live(stream)
    hub = hub_of(server)

    async with server.running.uow() as first, server.running.uow() as second:
        await first.events.append(hand_decision("takes-position-first"), EventKind.ADDED)
        await second.events.append(hand_decision("commits-first"), EventKind.ADDED)
        await second.commit()
        # The reader has looked at the log while the lower position is still uncommitted:
        # a `position > last` reader would now have moved past it for good.
        await hub.sync()
        await first.commit()

    replies = await take(stream, 2)
    assert [event_of(r)[1] for r in replies] == ["takes-position-first", "commits-first"]

    # A resume from the first event yields the second, once.
    resumed = aiter(
        server.decisions.WatchPending(
            decision_pb2.WatchPendingRequest(resume_cursor=replies[0].cursor), metadata=analyst
        )
    )
    assert event_of(await next_of(resumed))[1] == "commits-first"
    await _append_one(server, "later")
    assert event_of(await next_of(resumed))[1] == "later"
    assert event_of(await next_of(stream))[1] == "later"


@pytest.mark.parametrize("backend", ["postgres"])
async def test_snapshot_taken_beside_an_open_transaction_misses_nothing(
    server: Harness,
) -> None:
    analyst = await server.as_role(Role.ANALYST)
    async with server.running.uow() as slow:
        await slow.events.append(hand_decision("slow"), EventKind.ADDED)
        await _append_one(server, "quick")
        # The snapshot sees "quick" committed and "slow" still open.
        stream = aiter(
            server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
        )
        await until_live(stream)
        await slow.commit()
    await _append_one(server, "after")
    replies = await take(stream, 2)
    # "quick" was already visible to the snapshot; "slow" was not.
    assert [event_of(r)[1] for r in replies] == ["slow", "after"]


async def _append_one(server: Harness, analysis_id: str) -> None:
    async with server.running.uow() as uow:
        await uow.events.append(hand_decision(analysis_id), EventKind.ADDED)
        await uow.commit()
