"""A live event is serialized once and the same bytes go to every watcher it concerns.

The watches are read here as raw bytes (no deserializer on the client's side), so what
is checked is what went over the wire: identical bytes where the message is the same,
each watcher only what its filter and role let it see, and every message a valid
response that decodes to the decision as stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.api.watch import decision_bytes, pending_bytes
from hitl_grpc.domain.values import Priority, Role
from hitl_grpc.events.cursor import encode
from hitl_grpc.events.hub import IDLE_SLACK_S
from hitl_grpc.events.streams import DecisionItem, ItemKind, PendingItem
from tests.harness import Harness, Metadata, ServerFactory
from tests.watching import (
    append_events,
    event_of,
    hand_decision,
    hub_of,
    next_of,
    submit_request,
    take,
)

PENDING = "/hitl.v1.DecisionService/WatchPending"
DECISION = "/hitl.v1.DecisionService/WatchDecision"


def raw_pending(
    server: Harness, metadata: Metadata, request: decision_pb2.WatchPendingRequest
) -> AsyncIterator[bytes]:
    """WatchPending as the bytes the server sent."""
    call: grpc.aio.UnaryStreamMultiCallable[decision_pb2.WatchPendingRequest, bytes]
    call = server.channel.unary_stream(
        PENDING, request_serializer=decision_pb2.WatchPendingRequest.SerializeToString
    )
    return aiter(call(request, metadata=metadata))


def raw_decision(server: Harness, metadata: Metadata, analysis_id: str) -> AsyncIterator[bytes]:
    """WatchDecision as the bytes the server sent."""
    call: grpc.aio.UnaryStreamMultiCallable[decision_pb2.WatchDecisionRequest, bytes]
    call = server.channel.unary_stream(
        DECISION, request_serializer=decision_pb2.WatchDecisionRequest.SerializeToString
    )
    return aiter(
        call(decision_pb2.WatchDecisionRequest(analysis_id=analysis_id), metadata=metadata)
    )


def pending(raw: bytes) -> decision_pb2.WatchPendingResponse:
    """A WatchPending message, which must parse and must say something."""
    reply = decision_pb2.WatchPendingResponse.FromString(raw)
    assert reply.WhichOneof("event") is not None and reply.cursor
    return reply


async def live(stream: AsyncIterator[bytes]) -> list[str]:
    """Reads a raw WatchPending snapshot; returns its ids (the stream is then live)."""
    ids = []
    while not (reply := pending(await next_of(stream))).HasField("snapshot_complete"):
        ids.append(reply.added.analysis_id)
    return ids


async def get(server: Harness, metadata: Metadata, analysis_id: str) -> decision_pb2.Decision:
    reply = await server.decisions.GetDecision(
        decision_pb2.GetDecisionRequest(analysis_id=analysis_id), metadata=metadata, timeout=10
    )
    return reply.decision


async def test_watchers_of_a_live_event_get_the_same_bytes_each_sees_only_its_own(
    make_server: ServerFactory,
) -> None:
    async with make_server() as server:
        candi = await server.as_role(Role.SERVICE)
        other_machine = await server.as_role(Role.SERVICE)
        analyst = await server.as_role(Role.ANALYST)
        admin = await server.as_role(Role.ADMIN)
        everything = decision_pb2.WatchPendingRequest()
        critical = decision_pb2.WatchPendingRequest(priorities=[decision_pb2.PRIORITY_CRITICAL])
        watchers = {
            "analyst": raw_pending(server, analyst, everything),
            "admin": raw_pending(server, admin, everything),
            "analyst, critical only": raw_pending(server, analyst, critical),
        }
        for stream in watchers.values():
            assert await live(stream) == []

        high = submit_request(priority=decision_pb2.PRIORITY_HIGH)
        urgent = submit_request(priority=decision_pb2.PRIORITY_CRITICAL)
        for request in (high, urgent):
            await server.decisions.SubmitDecision(request, metadata=candi, timeout=10)
        # WatchDecision by the machine that submitted it and by an analyst; the other
        # machine may not see it at all.
        verdicts = {
            "candi": raw_decision(server, candi, high.analysis_id),
            "analyst": raw_decision(server, analyst, high.analysis_id),
        }
        hidden = raw_decision(server, other_machine, high.analysis_id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await next_of(hidden)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        firsts = {name: await next_of(stream) for name, stream in verdicts.items()}

        await server.decisions.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=high.analysis_id),
            metadata=analyst,
            timeout=10,
        )
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=high.analysis_id, status=decision_pb2.DECISION_STATUS_APPROVED
            ),
            metadata=analyst,
            timeout=10,
        )
        await server.decisions.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=urgent.analysis_id),
            metadata=analyst,
            timeout=10,
        )

        sent = {
            "analyst": await take(watchers["analyst"], 5),
            "admin": await take(watchers["admin"], 5),
            "analyst, critical only": await take(watchers["analyst, critical only"], 2),
        }
        # One encoding per event: the same bytes whichever the watcher.
        assert sent["analyst"] == sent["admin"]
        replies = [pending(raw) for raw in sent["analyst"]]
        assert [event_of(r) for r in replies] == [
            ("added", high.analysis_id, 1),
            ("added", urgent.analysis_id, 1),
            ("updated", high.analysis_id, 2),
            ("removed", high.analysis_id, decision_pb2.DECISION_STATUS_APPROVED),
            ("updated", urgent.analysis_id, 2),
        ]
        cursors = [r.cursor for r in replies]
        assert len(set(cursors)) == len(cursors)
        # The filtered watcher gets the same bytes for what it sees, and nothing else.
        assert sent["analyst, critical only"] == [sent["analyst"][1], sent["analyst"][4]]
        # What was sent is the decision as stored.
        assert replies[4].updated == await get(server, analyst, urgent.analysis_id)

        rest = {name: await take(stream, 2) for name, stream in verdicts.items()}
        assert rest["candi"] == rest["analyst"]
        states = [decision_pb2.WatchDecisionResponse.FromString(r) for r in rest["candi"]]
        assert [s.decision.version for s in states] == [2, 3]
        assert states[-1].decision == await get(server, candi, high.analysis_id)
        assert states[-1].cursor == replies[3].cursor  # one position, one cursor
        for name, stream in verdicts.items():
            first = decision_pb2.WatchDecisionResponse.FromString(firsts[name])
            assert first.decision.version == 1 and first.decision.analysis_id == high.analysis_id
            # The stream ends after the verdict.
            assert [m async for m in stream] == []


async def test_a_watcher_resuming_or_starting_late_decodes_the_same_messages(
    make_server: ServerFactory,
) -> None:
    async with make_server() as server:
        candi = await server.as_role(Role.SERVICE)
        analyst = await server.as_role(Role.ANALYST)
        first = raw_pending(server, analyst, decision_pb2.WatchPendingRequest())
        await live(first)
        requests = [submit_request() for _ in range(3)]
        for request in requests:
            await server.decisions.SubmitDecision(request, metadata=candi, timeout=10)
        sent = await take(first, 3)

        # From the log, encoded for this watcher alone: the same bytes as the live ones.
        resumed = raw_pending(
            server, analyst, decision_pb2.WatchPendingRequest(resume_cursor=pending(sent[0]).cursor)
        )
        assert await take(resumed, 2) == sent[1:]

        # A snapshot's items carry the snapshot cursor, not the live message's.
        late = raw_pending(server, analyst, decision_pb2.WatchPendingRequest())
        snapshot = [pending(raw) for raw in await take(late, 4)]
        assert [r.added for r in snapshot[:3]] == [pending(raw).added for raw in sent]
        assert {r.cursor for r in snapshot[:3]} != {pending(raw).cursor for raw in sent}
        assert snapshot[3].HasField("snapshot_complete")

        await server.decisions.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=requests[0].analysis_id),
            metadata=analyst,
            timeout=10,
        )
        updates = [await next_of(stream) for stream in (first, resumed, late)]
        assert updates[0] == updates[1] == updates[2]
        assert event_of(pending(updates[0])) == ("updated", requests[0].analysis_id, 2)


async def test_the_hub_hands_every_watcher_one_event_encoded_once_per_shape(
    make_server: ServerFactory,
) -> None:
    async with make_server() as server:
        hub = hub_of(server)
        subscriptions = [hub.subscribe(), hub.subscribe([Priority.HIGH]), hub.subscribe()]
        one = hub.subscribe_decision(hand_decision("shared").analysis_id)
        await append_events(server, [hand_decision("shared")])
        await hub.sync()
        events = [await sub.get(5) for sub in [*subscriptions, one]]
        assert all(e is events[0] for e in events)
        event = events[0]
        assert event is not None

        def item(kind: ItemKind) -> PendingItem:
            return PendingItem(kind, encode(event.position), event.decision, event)

        sent = [pending_bytes(item(ItemKind.ADDED)) for _ in subscriptions]
        assert all(raw is sent[0] for raw in sent)
        reply = decision_pb2.WatchPendingResponse.FromString(sent[0])
        assert event_of(reply) == ("added", "shared", 1)
        # Another shape of the same event is encoded on its own.
        verdict = decision_bytes(DecisionItem(event.decision, encode(event.position), event))
        assert verdict is decision_bytes(
            DecisionItem(event.decision, encode(event.position), event)
        )
        state = decision_pb2.WatchDecisionResponse.FromString(verdict)
        assert state.decision == reply.added and state.cursor == reply.cursor
        for sub in [*subscriptions, one]:
            sub.close()


async def test_an_idle_subscription_beats_a_whole_wait_after_its_last_event(
    make_server: ServerFactory,
) -> None:
    # The idle timer is not reset by each event: it must still never end a wait early.
    idle_s = 0.3
    async with make_server() as server:
        hub = hub_of(server)
        sub = hub.subscribe()
        loop = asyncio.get_running_loop()
        waiting = asyncio.create_task(sub.get(idle_s))
        await asyncio.sleep(idle_s / 2)  # time passes inside the first wait
        await append_events(server, [hand_decision("beat")])
        await hub.sync()
        assert (await waiting) is not None
        started = loop.time()
        assert await sub.get(idle_s) is None
        assert loop.time() - started >= idle_s - IDLE_SLACK_S
        started = loop.time()
        assert await sub.get(idle_s) is None
        assert loop.time() - started >= idle_s - IDLE_SLACK_S
        sub.close()
