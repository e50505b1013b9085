"""Streaming decision RPCs: WatchPending and WatchDecision."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
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
from hitl_grpc.events.hub import EventHub, SharedEvent
from hitl_grpc.events.streams import DecisionItem, PendingItem, watch_decision, watch_pending
from hitl_grpc.store.outbox import StoredEvent

log = logging.getLogger("hitl_grpc.api.watch")

Context = grpc.aio.ServicerContext[Any, Any]

# What a message is besides its event: with the event, the shape fixes the bytes sent.
_PENDING: Final = "WatchPendingResponse"
_DECISION: Final = "WatchDecisionResponse"


def _sent(event: StoredEvent | None, shape: Hashable, encode: Callable[[], bytes]) -> bytes:
    """A message as sent: encoded once per event and shape when the hub shares the event."""
    if isinstance(event, SharedEvent):
        return event.encoded(shape, encode)
    return encode()


def pending_bytes(item: PendingItem) -> bytes:
    """One WatchPending message, serialized (once for every watcher of a live event)."""
    return _sent(
        item.event,
        (_PENDING, item.kind, item.cursor),
        lambda: convert.pending_item_reply(item).SerializeToString(),
    )


def decision_bytes(item: DecisionItem) -> bytes:
    """One WatchDecision message, serialized (once for every watcher of a live event)."""
    return _sent(
        item.event,
        (_DECISION, item.cursor),
        lambda: convert.watch_decision_reply(item.decision, item.cursor).SerializeToString(),
    )


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

    async def _renew(self, principal: Principal) -> None:
        """The watcher's leases renewed; a database in trouble skips it (the stream goes on)."""
        if self._renew_leases is None or principal.role not in (Role.ANALYST, Role.ADMIN):
            return
        try:
            await self._renew_leases(principal)
        except errors.DomainError as exc:
            log.warning("lease renewal for a watcher skipped: %s", exc.message)

    async def WatchPending(
        self, request: decision_pb2.WatchPendingRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """The queue as serialized WatchPendingResponses (registered without a serializer)."""
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
            yield pending_bytes(item)

    async def WatchDecision(
        self, request: decision_pb2.WatchDecisionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        """One decision as serialized WatchDecisionResponses (registered without a serializer)."""
        visible = functools.partial(visible_to, current_principal())
        analysis_id = parse_analysis_id(request.analysis_id)
        async for item in watch_decision(self._hub, analysis_id, visible):
            yield decision_bytes(item)
