"""What a watcher holds is bounded in bytes: snapshot pages, catch-up reads, its queue."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.domain import errors
from hitl_grpc.domain.values import Role
from hitl_grpc.events.streams import ItemKind, PendingItem, watch_pending
from tests.harness import Harness, Metadata, ServerFactory
from tests.watching import append_events, hand_decision, hub_of, next_of, submit_request

# Each decision below is larger than a page, so every page holds exactly one.
PAGE_BYTES = 1024
BIG = "x" * 2000


async def test_open_set_changing_while_paged_is_shown_once_and_nothing_missed(
    make_server: ServerFactory,
) -> None:
    async with make_server(watch_page_bytes=PAGE_BYTES) as server:
        candi = await server.as_role(Role.SERVICE)
        analyst = await server.as_role(Role.ANALYST)

        async def submit(name: str, priority: decision_pb2.Priority.ValueType) -> str:
            request = submit_request(name, priority=priority, summary=BIG)
            await server.decisions.SubmitDecision(request, metadata=candi, timeout=10)
            return name

        a = await submit("a", decision_pb2.PRIORITY_HIGH)
        b = await submit("b", decision_pb2.PRIORITY_HIGH)
        c = await submit("c", decision_pb2.PRIORITY_MEDIUM)
        d = await submit("d", decision_pb2.PRIORITY_MEDIUM)
        e = await submit("e", decision_pb2.PRIORITY_LOW)

        items = aiter(watch_pending(hub_of(server), frozenset(), None, heartbeat_s=60))
        try:
            assert _shape(await next_of(items)) == ("added", a, 1)
            # Between the first page and the rest: a shown item changes, an item not yet
            # shown changes, one not yet shown is closed, one opens before the pages'
            # place in the queue and one after it.
            await _claim(server, analyst, a)
            await _claim(server, analyst, c)
            await server.decisions.MakeDecision(
                decision_pb2.MakeDecisionRequest(
                    analysis_id=d, status=decision_pb2.DECISION_STATUS_REJECTED, notes="benign"
                ),
                metadata=analyst,
                timeout=10,
            )
            f = await submit("f", decision_pb2.PRIORITY_CRITICAL)
            g = await submit("g", decision_pb2.PRIORITY_LOW)

            rest = [_shape(await next_of(items)) for _ in range(7)]
            assert rest == [
                ("added", b, 1),
                ("added", c, 2),
                ("added", e, 1),
                ("added", g, 1),
                # What changed behind the pages: `a` again at its new version, and `f`,
                # which opened where the pages had already passed. Not `d`, never shown.
                ("updated", a, 2),
                ("added", f, 1),
                ("snapshot_complete", "", 0),
            ]
            await _claim(server, analyst, b)
            assert _shape(await next_of(items)) == ("updated", b, 2)
        finally:
            await items.aclose()  # type: ignore[attr-defined]


async def test_catch_up_reads_are_bounded_in_bytes(make_server: ServerFactory) -> None:
    async with make_server() as server:
        await append_events(server, [hand_decision(f"big-{n}", summary=BIG * 5) for n in range(6)])
        store = hub_of(server).store
        head = await store.head()
        size = (await store.read_range(0, head, 1, 1))[0][0].size
        assert size > 10_000
        # Up to the event that crosses the budget, and not one more.
        some, _ = await store.read_range(0, head, 500, 2 * size + 1)
        assert [e.analysis_id for e in some] == ["big-0", "big-1", "big-2"]
        # However small the budget, a read makes progress.
        one, _ = await store.read_range(some[-1].position, head, 500, 1)
        assert [e.analysis_id for e in one] == ["big-3"]
        # The reader's own batches are bounded the same way, and say whether more follow.
        batch, more = await store.read_new(0, 500, 2 * size + 1)
        assert len(batch) == 3 and more
        rest, more = await store.read_new(batch[-1].position, 500, 10 * size)
        assert [e.analysis_id for e in rest] == ["big-3", "big-4", "big-5"] and not more


async def test_watcher_queue_is_bounded_in_bytes_not_only_in_events(
    make_server: ServerFactory,
) -> None:
    async with make_server(
        watch_queue_bytes=65536, watch_queue_size=1000, metrics_listen="127.0.0.1:0"
    ) as server:
        hub = hub_of(server)
        stalled = hub.subscribe()
        keeping_up = hub.subscribe()
        # Ten ~10 KiB events: far below 1,000 events, above 64 KiB.
        for n in range(10):
            await append_events(server, [hand_decision(f"e-{n}", summary=BIG * 5)])
            await hub.sync()
            got = await keeping_up.get(5)
            assert got is not None and got.analysis_id == f"e-{n}"
        with pytest.raises(errors.ResourceExhausted, match="watcher fell behind"):
            await stalled.get(5)
        url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
        assert b"hitl_watchers_cut_off_total 1.0" in body

        # One event larger than the whole budget still reaches a watcher that keeps up.
        await append_events(server, [hand_decision("huge", summary="y" * 100_000)])
        await hub.sync()
        got = await keeping_up.get(5)
        assert got is not None and got.analysis_id == "huge" and got.size > 65536
        keeping_up.close()


def _shape(item: PendingItem) -> tuple[str, str, int]:
    if item.decision is None:
        return item.kind.value, "", 0
    if item.kind is ItemKind.REMOVED:
        return item.kind.value, item.decision.analysis_id, int(item.decision.status)
    return item.kind.value, item.decision.analysis_id, item.decision.version


async def _claim(server: Harness, metadata: Metadata, analysis_id: str) -> None:
    await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=analysis_id), metadata=metadata, timeout=10
    )
