"""Streaming decision RPCs: WatchPending and WatchDecision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from hitl.v1 import decision_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class WatchServicer:
    """The streaming half of DecisionService; DecisionServicer delegates to it."""

    async def WatchPending(
        self, request: decision_pb2.WatchPendingRequest, context: Context
    ) -> AsyncIterator[decision_pb2.WatchPendingResponse]:
        raise NotImplementedError
        yield  # type: ignore[unreachable]  # makes this an async generator

    async def WatchDecision(
        self, request: decision_pb2.WatchDecisionRequest, context: Context
    ) -> AsyncIterator[decision_pb2.WatchDecisionResponse]:
        raise NotImplementedError
        yield  # type: ignore[unreachable]  # makes this an async generator
