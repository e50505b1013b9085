"""Streaming decision RPCs: WatchPending and WatchDecision."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
from hitl.v1 import decision_pb2

from hitl_grpc.api import convert
from hitl_grpc.auth.principal import current_principal
from hitl_grpc.domain import errors
from hitl_grpc.domain.decisions import visible_to
from hitl_grpc.domain.validation import parse_analysis_id
from hitl_grpc.domain.values import Principal, Role
from hitl_grpc.events import cursor as cursors
from hitl_grpc.events.hub import EventHub
from hitl_grpc.events.streams import PendingItem, watch_decision, watch_pending

log = logging.getLogger("hitl_grpc.api.watch")

Context = grpc.aio.ServicerContext[Any, Any]

# Each live event is converted to proto once per process, not once per watcher.
_PROTO_CACHE_SIZE: Final = 2048


class WatchServicer:
    """The streaming half of DecisionService; DecisionServicer delegates to it."""

    def __init__(
        self,
        hub: EventHub,
        *,
        heartbeat_s: float,
        renew_leases: Callable[[Principal], Awaitable[int]] | None = None,
    ) -> None:
        self._hub = hub
        self._heartbeat_s = heartbeat_s
        self._renew_leases = renew_leases
        self._protos: OrderedDict[int, decision_pb2.Decision] = OrderedDict()

    async def _renew(self, principal: Principal) -> None:
        """The watcher's leases renewed; a database in trouble skips it (the stream goes on)."""
        if self._renew_leases is None or principal.role not in (Role.ANALYST, Role.ADMIN):
            return
        try:
            await self._renew_leases(principal)
        except errors.DomainError as exc:
            log.warning("lease renewal for a watcher skipped: %s", exc.message)

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

    async def WatchPending(
        self, request: decision_pb2.WatchPendingRequest, context: Context
    ) -> AsyncIterator[decision_pb2.WatchPendingResponse]:
        priorities = frozenset(convert.priority_from_proto(p) for p in request.priorities)
        after = cursors.decode(request.resume_cursor) if request.resume_cursor else None
        principal = current_principal()
        loop = asyncio.get_running_loop()
        # A message (event or heartbeat) goes out at least every heartbeat_s: the stream's
        # own pace renews the watcher's leases, no timer of its own needed.
        renew_at = loop.time()
        async for item in watch_pending(self._hub, priorities, after, self._heartbeat_s):
            if request.renew_leases and loop.time() >= renew_at:
                renew_at = loop.time() + self._heartbeat_s
                await self._renew(principal)
            yield convert.pending_item_reply(item, self._proto)

    async def WatchDecision(
        self, request: decision_pb2.WatchDecisionRequest, context: Context
    ) -> AsyncIterator[decision_pb2.WatchDecisionResponse]:
        visible = functools.partial(visible_to, current_principal())
        analysis_id = parse_analysis_id(request.analysis_id)
        async for decision, cursor in watch_decision(self._hub, analysis_id, visible):
            yield convert.watch_decision_reply(decision, cursor)
