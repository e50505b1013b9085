"""Fan-out: one log read per batch per process, replicas, slow consumers, shutdown."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import grpc
import pytest
from hitl.v1 import decision_pb2, decision_pb2_grpc
from sqlalchemy import event

from hitl_grpc.domain.values import Role
from tests.harness import Harness, ServerFactory
from tests.watching import (
    append_events,
    event_of,
    hand_decision,
    hub_of,
    next_of,
    submit_request,
    take,
    until_live,
)


async def test_one_log_read_per_batch_whatever_the_number_of_watchers(
    make_server: ServerFactory, backend: str
) -> None:
    watchers = 30
    # No catch-up timer and no pruner (it runs every sweep interval) in this test: every
    # read is one a commit asked for.
    async with make_server(watch_catchup_s=3600, sweep_interval_s=3600) as server:
        analyst = await server.as_role(Role.ANALYST)
        streams = [
            aiter(
                server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
            )
            for _ in range(watchers)
        ]
        for stream in streams:
            await until_live(stream)
        reads: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            if "FROM decision_events" in statement and statement.lstrip().upper().startswith(
                ("SELECT", "WITH")
            ):
                reads.append(statement)

        sync_engine = server.running.engine.sync_engine

        def hub_read(statement: str) -> bool:
            # The hub reads open-ended (position > head); a watcher catching up, a range.
            return "decision_events.position >" in statement and (
                "decision_events.position <=" not in statement
            )

        await hub_of(server).sync()
        reads_before = hub_of(server).reads
        # On PostgreSQL the hub reads through the hot path's own connections.
        hot = server.running.reader
        hot_before = hot.executed["events"] if hot else 0
        event.listen(sync_engine, "before_cursor_execute", count)
        try:
            await append_events(server, [hand_decision(f"batch-{n}") for n in range(5)])
            for stream in streams:
                got = await take(stream, 5)
                assert [event_of(r)[1] for r in got] == [f"batch-{n}" for n in range(5)]
        finally:
            event.remove(sync_engine, "before_cursor_execute", count)
        hot_reads = hot.executed["events"] - hot_before if hot else 0
        # Every read of the log was the hub's; none was a watcher's own.
        assert all(hub_read(statement) for statement in reads), reads
        total = len(reads) + hot_reads
        assert total == hub_of(server).reads - reads_before
        if backend == "sqlite":
            assert total == 1
        else:
            # The NOTIFY of the same commit may add one read; nothing else does.
            assert 1 <= total <= 2


async def test_change_on_one_replica_reaches_a_watcher_on_another(
    make_server: ServerFactory, backend: str
) -> None:
    # On PostgreSQL the catch-up timer is off: only NOTIFY can carry the change across.
    catchup = 3600 if backend == "postgres" else 0.05
    async with make_server(watch_catchup_s=catchup) as a, make_server() as b:
        candi = await a.as_role(Role.SERVICE)
        analyst = await a.as_role(Role.ANALYST)
        submitted = await a.decisions.SubmitDecision(submit_request(), metadata=candi, timeout=10)
        stream = aiter(
            a.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
        )
        assert await until_live(stream) == [submitted.decision.analysis_id]

        await b.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=submitted.decision.analysis_id,
                status=decision_pb2.DECISION_STATUS_APPROVED,
                approved_actions=[submitted.decision.recommended_actions[0]],
            ),
            metadata=analyst,
            timeout=10,
        )
        assert event_of(await next_of(stream)) == (
            "removed",
            submitted.decision.analysis_id,
            decision_pb2.DECISION_STATUS_APPROVED,
        )


async def test_slow_consumer_is_cut_off_while_a_fast_one_keeps_receiving(
    make_server: ServerFactory,
) -> None:
    async with make_server(watch_queue_size=4) as server:
        analyst = await server.as_role(Role.ANALYST)
        hub = hub_of(server)
        # The slow watcher's client stops reading: once its transport window is full the
        # server cannot write, and its queue fills.
        async with grpc.aio.insecure_channel(
            server.running.address, options=[("grpc.http2.bdp_probe", 0)]
        ) as slow_channel:
            slow_stub = decision_pb2_grpc.DecisionServiceStub(slow_channel)
            slow = aiter(
                slow_stub.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
            )
            fast = aiter(
                server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst)
            )
            await until_live(slow)
            await until_live(fast)
            assert hub.watchers == 2

            sent = 0
            while hub.watchers == 2:
                assert sent < 2000, "the slow watcher was never cut off"
                batch = [hand_decision(f"e-{sent + n}", summary="x" * 16_000) for n in range(4)]
                await append_events(server, batch)
                sent += len(batch)
                await hub.sync()
                got = await take(fast, len(batch))
                assert [event_of(r)[1] for r in got] == [d.analysis_id for d in batch]

            # The fast one is unaffected by its neighbour's fall.
            await append_events(server, [hand_decision("after-cut")])
            assert event_of(await next_of(fast))[1] == "after-cut"

            received: list[str] = []
            cursor = ""
            ended: grpc.aio.AioRpcError | None = None
            while ended is None:
                try:
                    reply = await next_of(slow)
                except grpc.aio.AioRpcError as exc:
                    ended = exc
                    break
                received.append(event_of(reply)[1])
                cursor = reply.cursor
            assert ended.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert received == [f"e-{n}" for n in range(len(received))]

        # It resumes from its last cursor with nothing lost.
        resumed = aiter(
            server.decisions.WatchPending(
                decision_pb2.WatchPendingRequest(resume_cursor=cursor), metadata=analyst
            )
        )
        rest = await take(resumed, sent - len(received) + 1)
        assert [event_of(r)[1] for r in rest] == [
            *(f"e-{n}" for n in range(len(received), sent)),
            "after-cut",
        ]


async def test_shutdown_ends_watches_with_unavailable(make_server: ServerFactory) -> None:
    async with AsyncExitStack() as outer:
        stack = AsyncExitStack()
        server: Harness = await stack.enter_async_context(make_server())
        analyst = await server.as_role(Role.ANALYST)
        channel = await outer.enter_async_context(grpc.aio.insecure_channel(server.running.address))
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        pending = aiter(stub.WatchPending(decision_pb2.WatchPendingRequest(), metadata=analyst))
        await until_live(pending)
        candi = await server.as_role(Role.SERVICE)
        submitted = await server.decisions.SubmitDecision(
            submit_request(), metadata=candi, timeout=10
        )
        assert event_of(await next_of(pending))[0] == "added"
        one = aiter(
            stub.WatchDecision(
                decision_pb2.WatchDecisionRequest(analysis_id=submitted.decision.analysis_id),
                metadata=candi,
            )
        )
        await next_of(one)

        closing = asyncio.create_task(stack.aclose())
        for stream in (pending, one):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await next_of(stream)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
        await asyncio.wait_for(closing, 10)
