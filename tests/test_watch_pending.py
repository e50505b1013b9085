"""WatchPending: snapshot then live, filters, heartbeats, resume without gap or duplicate."""

from __future__ import annotations

import asyncio
import base64
import random
from datetime import timedelta

import grpc
import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import Priority, Role, Status
from hitl_grpc.events import cursor as cursors
from tests.decisions_support import wait_until
from tests.harness import Harness, ServerFactory
from tests.watching import (
    append_events,
    event_of,
    hand_decision,
    hub_of,
    next_of,
    refusal,
    submit_request,
    take,
    until_live,
    watch,
)


async def test_snapshot_then_live_changes_in_order(server: Harness) -> None:
    candi = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    low = await server.decisions.SubmitDecision(
        submit_request(priority=decision_pb2.PRIORITY_LOW), metadata=candi, timeout=10
    )
    critical = await server.decisions.SubmitDecision(
        submit_request(priority=decision_pb2.PRIORITY_CRITICAL), metadata=candi, timeout=10
    )

    stream = aiter(
        server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
    )
    snapshot = await take(stream, 3)
    assert [event_of(r)[:2] for r in snapshot] == [
        ("added", critical.decision.analysis_id),
        ("added", low.decision.analysis_id),
        ("snapshot_complete", ""),
    ]
    assert all(r.cursor for r in snapshot)

    fresh = await server.decisions.SubmitDecision(submit_request(), metadata=candi, timeout=10)
    await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=low.decision.analysis_id,
            status=decision_pb2.DECISION_STATUS_REJECTED,
            notes="benign",
        ),
        metadata=analyst,
        timeout=10,
    )
    live = await take(stream, 2)
    assert event_of(live[0]) == ("added", fresh.decision.analysis_id, 1)
    assert event_of(live[1]) == (
        "removed",
        low.decision.analysis_id,
        decision_pb2.DECISION_STATUS_REJECTED,
    )
    cursors = [r.cursor for r in (*snapshot[2:], *live)]
    assert len(set(cursors)) == len(cursors)


async def test_priority_filter_sends_only_wanted_priorities(server: Harness) -> None:
    candi = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    request = decision_pb2.WatchPendingRequest(priorities=[decision_pb2.PRIORITY_CRITICAL])
    stream = aiter(server.decisions.WatchPending(request, metadata=analyst))
    assert await until_live(stream) == []
    await server.decisions.SubmitDecision(
        submit_request(priority=decision_pb2.PRIORITY_LOW), metadata=candi, timeout=10
    )
    wanted = await server.decisions.SubmitDecision(
        submit_request(priority=decision_pb2.PRIORITY_CRITICAL), metadata=candi, timeout=10
    )
    reply = await next_of(stream)
    assert event_of(reply) == ("added", wanted.decision.analysis_id, 1)


async def test_idle_stream_gets_heartbeats_whose_cursor_resumes(
    make_server: ServerFactory,
) -> None:
    async with make_server(heartbeat_s=0.1) as server:
        analyst = await server.as_role(Role.ANALYST)
        request = decision_pb2.WatchPendingRequest(priorities=[decision_pb2.PRIORITY_CRITICAL])
        stream = aiter(server.decisions.WatchPending(request, metadata=analyst))
        await until_live(stream)
        # Filtered-out events still move the heartbeat cursor forward.
        await append_events(server, [hand_decision("low-1", priority=Priority.LOW)])
        await hub_of(server).sync()
        beat = await next_of(stream)
        while not beat.HasField("heartbeat"):
            beat = await next_of(stream)
        assert beat.heartbeat.sent_at.seconds > 0

        await append_events(server, [hand_decision("crit-1", priority=Priority.CRITICAL)])
        resumed = aiter(
            server.decisions.WatchPending(
                decision_pb2.WatchPendingRequest(
                    priorities=[decision_pb2.PRIORITY_CRITICAL], resume_cursor=beat.cursor
                ),
                metadata=analyst,
            )
        )
        reply = await next_of(resumed)
        while reply.HasField("heartbeat"):
            reply = await next_of(resumed)
        assert event_of(reply) == ("added", "crit-1", 1)


async def test_resume_after_disconnects_has_no_gap_and_no_duplicate(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    total = 1000
    rng = random.Random(6)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(rng.randint(1, 6), total - sum(sizes)))

    async def write(batches: list[tuple[int, int]]) -> None:
        for start, size in batches:
            await append_events(
                server, [hand_decision(f"ev-{n}") for n in range(start, start + size)]
            )

    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    batches = list(zip(starts, sizes, strict=True))

    seen: list[str] = []
    call = server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
    stream = aiter(call)
    await until_live(stream)
    # Four writers at once: on PostgreSQL their commits interleave out of position order.
    writers = [asyncio.create_task(write(batches[i::4])) for i in range(4)]
    first = await next_of(stream, 10)
    seen.append(event_of(first)[1])
    cursor = first.cursor
    reconnects = 0
    while len(seen) < total:
        if reconnects:
            call = server.decisions.WatchPending(
                decision_pb2.WatchPendingRequest(resume_cursor=cursor), metadata=analyst
            )
            stream = aiter(call)
        for _ in range(rng.randint(1, 150)):
            if len(seen) == total:
                break
            reply = await next_of(stream, 10)
            if reply.HasField("heartbeat"):
                continue
            seen.append(event_of(reply)[1])
            cursor = reply.cursor
        call.cancel()
        reconnects += 1
    await asyncio.gather(*writers)

    assert reconnects > 5
    assert len(seen) == len(set(seen)) == total
    # Events of one transaction arrive together and in their append order.
    assert seen.index("ev-1") == seen.index("ev-0") + 1 or sizes[0] == 1


async def test_cursor_not_issued_by_the_service_is_invalid(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    stream = aiter(
        server.decisions.WatchPending(
            decision_pb2.WatchPendingRequest(resume_cursor="v1:not-base64!"), metadata=analyst
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_of(stream)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_viewer_may_not_watch_the_queue(server: Harness) -> None:
    viewer = await server.as_role(Role.VIEWER)
    stream = aiter(
        server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=viewer)
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_of(stream)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_cursor_older_than_retention_is_out_of_range(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    await append_events(server, [hand_decision("old-1"), hand_decision("old-2")])
    stream = aiter(
        server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
    )
    await until_live(stream)
    await append_events(server, [hand_decision("kept-0")])
    early = await next_of(stream)
    later_events = [hand_decision(f"kept-{n}") for n in (1, 2)]

    old = server.running.clock.now() - server.running.settings.event_retention - timedelta(hours=1)
    await append_events(server, [hand_decision("older-than-retention", now=old)])
    await append_events(server, later_events)
    replies = await take(stream, 3)
    newest = replies[-1].cursor
    assert [event_of(r)[1] for r in replies] == ["older-than-retention", "kept-1", "kept-2"]

    # Pruning removes the whole prefix up to the last expired event.
    pruned = 0

    async def pruned_prefix() -> bool:
        nonlocal pruned
        pruned += await hub_of(server).prune()
        return pruned >= 4

    await wait_until(pruned_prefix)
    assert pruned == 4

    stale = aiter(
        server.decisions.WatchPending(
            decision_pb2.WatchPendingRequest(resume_cursor=early.cursor), metadata=analyst
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_of(stream=stale)
    assert caught.value.code() is grpc.StatusCode.OUT_OF_RANGE

    fresh = aiter(
        server.decisions.WatchPending(
            decision_pb2.WatchPendingRequest(resume_cursor=replies[1].cursor), metadata=analyst
        )
    )
    assert event_of(await next_of(fresh))[1] == "kept-2"
    await append_events(server, [hand_decision("after-prune")])
    assert event_of(await next_of(fresh))[1] == "after-prune"
    assert newest


async def test_updated_and_removed_events_carry_state(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    stream = aiter(
        server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
    )
    await until_live(stream)
    await append_events(
        server, [hand_decision("x", version=2, status=Status.IN_REVIEW)], EventKind.UPDATED
    )
    await append_events(
        server, [hand_decision("x", version=3, status=Status.APPROVED)], EventKind.REMOVED
    )
    updated, removed = await take(stream, 2)
    assert updated.updated.status == decision_pb2.DECISION_STATUS_IN_REVIEW
    assert event_of(removed) == ("removed", "x", decision_pb2.DECISION_STATUS_APPROVED)


def _wire(prefix: str, text: str) -> str:
    return prefix + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "raw",
    [
        _wire("v1:", "0.9223372036854775808"),  # 2**63: past the positions column
        _wire("v1:", "0.99999999999999999999"),
        _wire("v1:", "0.-5"),
        _wire("v2:", "9223372036854775808"),
        _wire("v2:", "-1"),
        _wire("v2:", "+7"),
        _wire("v2:", "1.2"),
        _wire("v2:", ""),
        _wire("v2:", "１２"),  # noqa: RUF001 - fullwidth digits int() would accept
        "v2:%%%",
        "v9:MTI",
        "v2:" + "A" * 200,
    ],
)
async def test_cursor_out_of_range_or_malformed_is_invalid(server: Harness, raw: str) -> None:
    analyst = await server.as_role(Role.ANALYST)
    refused = await refusal(watch(server, analyst, raw))
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a cursor issued by this service" in str(refused.details())


async def test_cursor_ahead_of_the_event_log_is_out_of_range(server: Harness) -> None:
    # As after restoring an older backup: the cursor names positions the log never had.
    analyst = await server.as_role(Role.ANALYST)
    await append_events(server, [hand_decision("one"), hand_decision("two")])
    head = await hub_of(server).store.head()
    for ahead in (cursors.encode(head + 1), _wire("v1:", f"0.{head + 1000}")):
        refused = await refusal(watch(server, analyst, ahead))
        assert refused.code() is grpc.StatusCode.OUT_OF_RANGE
        assert refused.details() == "cursor is ahead of the event log; start again without a cursor"

    # The head itself is fine, and so is a cursor of the old form SQLite issued.
    at_head = watch(server, analyst, cursors.encode(head))
    legacy = watch(server, analyst, _wire("v1:", f"0.{head - 1}"))
    assert event_of(await next_of(legacy))[1] == "two"
    await append_events(server, [hand_decision("three")])
    assert event_of(await next_of(at_head))[1] == "three"
    assert event_of(await next_of(legacy))[1] == "three"


@pytest.mark.parametrize("legacy", [_wire("v1:", "4711.3"), _wire("v1:", "4711.0.4720.4712,4715")])
async def test_cursor_of_the_old_transaction_order_asks_for_a_resync(
    server: Harness, legacy: str
) -> None:
    analyst = await server.as_role(Role.ANALYST)
    refused = await refusal(watch(server, analyst, legacy))
    assert refused.code() is grpc.StatusCode.OUT_OF_RANGE
    assert "start again without a cursor" in str(refused.details())
