"""Streaming decision RPCs: WatchPending and WatchDecision."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
from hitl.v1 import decision_pb2

from hitl_grpc.api import convert
from hitl_grpc.auth.principal import current_principal
from hitl_grpc.domain.errors import InvalidField
from hitl_grpc.domain.validation import parse_analysis_id
from hitl_grpc.domain.values import Decision, Priority, Role
from hitl_grpc.events import cursor as cursors
from hitl_grpc.events.hub import EventHub
from hitl_grpc.events.streams import ItemKind, PendingItem, watch_decision, watch_pending

Context = grpc.aio.ServicerContext[Any, Any]

# Each live event is converted to proto once per process, not once per watcher.
_PROTO_CACHE_SIZE: Final = 2048


class WatchServicer:
    """The streaming half of DecisionService; DecisionServicer delegates to it."""

    def __init__(self, hub: EventHub, *, heartbeat_s: float) -> None:
        self._hub = hub
        self._heartbeat_s = heartbeat_s
        self._protos: OrderedDict[int, decision_pb2.Decision] = OrderedDict()

    def _proto(self, item: PendingItem) -> decision_pb2.Decision:
        assert item.decision is not None
        if item.event is None:
            return convert.decision_to_proto(item.decision)
        key = item.event.position
        proto = self._protos.get(key)
        if proto is None:
            proto = convert.decision_to_proto(item.decision)
            self._protos[key] = proto
            if len(self._protos) > _PROTO_CACHE_SIZE:
                self._protos.popitem(last=False)
        return proto

    def _message(self, item: PendingItem) -> decision_pb2.WatchPendingResponse:
        reply = decision_pb2.WatchPendingResponse(cursor=item.cursor)
        if item.kind is ItemKind.ADDED:
            reply.added.CopyFrom(self._proto(item))
        elif item.kind is ItemKind.UPDATED:
            reply.updated.CopyFrom(self._proto(item))
        elif item.kind is ItemKind.REMOVED:
            assert item.decision is not None
            reply.removed.analysis_id = item.decision.analysis_id
            reply.removed.final_status = decision_pb2.DecisionStatus.ValueType(
                int(item.decision.status)
            )
        elif item.kind is ItemKind.SNAPSHOT_COMPLETE:
            reply.snapshot_complete.SetInParent()
        else:
            reply.heartbeat.sent_at.GetCurrentTime()
        return reply

    async def WatchPending(
        self, request: decision_pb2.WatchPendingRequest, context: Context
    ) -> AsyncIterator[decision_pb2.WatchPendingResponse]:
        priorities = frozenset(_priority(p) for p in request.priorities)
        after = cursors.decode(request.resume_cursor) if request.resume_cursor else None
        async for item in watch_pending(self._hub, priorities, after, self._heartbeat_s):
            yield self._message(item)

    async def WatchDecision(
        self, request: decision_pb2.WatchDecisionRequest, context: Context
    ) -> AsyncIterator[decision_pb2.WatchDecisionResponse]:
        principal = current_principal()
        analysis_id = parse_analysis_id(request.analysis_id)

        def visible(decision: Decision) -> bool:
            # A machine account sees only what it submitted; to it the rest does not exist.
            return principal.role is not Role.SERVICE or decision.submitted_by == (
                principal.username
            )

        async for decision, cursor in watch_decision(self._hub, analysis_id, visible):
            yield decision_pb2.WatchDecisionResponse(
                cursor=cursor, decision=convert.decision_to_proto(decision)
            )


def _priority(value: int) -> Priority:
    try:
        return Priority(value)
    except ValueError:
        raise InvalidField.one(
            "priorities", "must be PRIORITY_CRITICAL, _HIGH, _MEDIUM or _LOW"
        ) from None
