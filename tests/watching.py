"""What the watch tests share: requests, hand-written events, and reading streams with deadlines."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from hitl.v1 import decision_pb2

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import Analysis, AnalysisId, Decision, Priority, Status
from tests.harness import Harness, Metadata, ObservedHub
from tests.samples import sample_request, ts

T = TypeVar("T")
STEP_S = 5.0


async def next_of(stream: AsyncIterator[T], timeout_s: float = STEP_S) -> T:
    """The stream's next message, or a test failure after `timeout_s`."""
    return await asyncio.wait_for(anext(stream), timeout_s)


async def take(stream: AsyncIterator[T], count: int, timeout_s: float = STEP_S) -> list[T]:
    """The next `count` messages, each within `timeout_s`."""
    return [await next_of(stream, timeout_s) for _ in range(count)]


def hub_of(server: Harness) -> ObservedHub:
    """The server's event hub."""
    return server.hub


def submit_request(
    analysis_id: str | None = None,
    priority: decision_pb2.Priority.ValueType = decision_pb2.PRIORITY_HIGH,
    summary: str = "lateral movement from a build host",
) -> decision_pb2.SubmitDecisionRequest:
    """A valid analysis to submit."""
    return sample_request(
        analysis_id or f"an-{uuid.uuid4().hex[:12]}",
        iocs=["evil.example"],
        ttps=["T1021"],
        recommended_actions=[
            decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
        ],
        forensic_summary=summary,
        priority=priority,
        detected_at=ts(datetime.now(UTC) - timedelta(minutes=1)),
    )


def hand_decision(
    analysis_id: str,
    *,
    version: int = 1,
    status: Status = Status.PENDING,
    priority: Priority = Priority.HIGH,
    summary: str = "",
    now: datetime | None = None,
) -> Decision:
    """A decision built by hand, for events written straight into the outbox."""
    now = now or datetime.now(UTC)
    return Decision(
        analysis=Analysis(
            analysis_id=AnalysisId(analysis_id),
            incident_id="inc",
            threat_level="high",
            source_ip="198.51.100.1",
            attributed_actor="actor",
            confidence=50.0,
            iocs=(),
            ttps=(),
            recommended_actions=(),
            forensic_summary=summary,
            priority=priority,
            detected_at=now,
        ),
        status=status,
        version=version,
        created_at=now,
        updated_at=now,
        sla_deadline=now + timedelta(hours=1),
        submitted_by="candi",
    )


async def append_events(
    server: Harness, decisions: Iterable[Decision], kind: EventKind = EventKind.ADDED
) -> None:
    """Appends one event per decision, all in one transaction."""
    async with server.running.uow() as uow:
        for decision in decisions:
            await uow.events.append(decision, kind)
        await uow.commit()


def event_of(reply: decision_pb2.WatchPendingResponse) -> tuple[str, str, int]:
    """(kind, analysis_id, version or final status) of a WatchPending message."""
    kind = reply.WhichOneof("event")
    if kind in ("added", "updated"):
        d: Any = getattr(reply, kind)
        return kind, d.analysis_id, d.version
    if kind == "removed":
        return kind, reply.removed.analysis_id, reply.removed.final_status
    return str(kind), "", 0


async def until_live(stream: AsyncIterator[decision_pb2.WatchPendingResponse]) -> list[str]:
    """Reads the snapshot; returns its analysis ids (the stream is then live)."""
    ids: list[str] = []
    while True:
        reply = await next_of(stream)
        if reply.HasField("snapshot_complete"):
            assert reply.cursor
            return ids
        assert reply.HasField("added"), reply
        ids.append(reply.added.analysis_id)


def watch(
    server: Harness, metadata: Metadata, cursor: str = ""
) -> AsyncIterator[decision_pb2.WatchPendingResponse]:
    """A WatchPending stream, from the start or resumed from `cursor`."""
    request = decision_pb2.WatchPendingRequest(resume_cursor=cursor)
    return aiter(server.decisions.WatchPending(request, metadata=metadata))


async def watch_live(
    server: Harness, metadata: Metadata
) -> AsyncIterator[decision_pb2.WatchPendingResponse]:
    """A WatchPending stream whose snapshot has been read."""
    stream = watch(server, metadata)
    await until_live(stream)
    return stream


async def refusal(stream: AsyncIterator[decision_pb2.WatchPendingResponse]) -> grpc.aio.AioRpcError:
    """The error a stream ends with before any message."""
    try:
        reply = await next_of(stream)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"stream was not refused: {reply}")
