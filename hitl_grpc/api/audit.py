"""AuditService: pages through the audit trail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from hitl.v1 import audit_pb2, audit_pb2_grpc

from hitl_grpc.accounts.trail import AuditTrail
from hitl_grpc.api import convert
from hitl_grpc.domain.ports import DeliveryLog

Context = grpc.aio.ServicerContext[Any, Any]


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    """Read access to the append-only audit trail (admins only, by the contract's policy)."""

    def __init__(self, trail: AuditTrail, deliveries: DeliveryLog) -> None:
        self._trail = trail
        self._deliveries = deliveries

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: Context
    ) -> audit_pb2.ListAuditEventsResponse:
        events, next_before = await self._trail.page(convert.audit_query_from_proto(request))
        return audit_pb2.ListAuditEventsResponse(
            events=[convert.audit_event_to_proto(e) for e in events],
            next_page_token=convert.page_token("a", str(next_before or "")),
        )

    async def ExportAuditEvents(
        self, request: audit_pb2.ExportAuditEventsRequest, context: Context
    ) -> AsyncIterator[audit_pb2.ExportAuditEventsResponse]:
        after = convert.export_cursor_from_proto(request)
        async for record in self._trail.export(after):
            yield convert.audit_export_to_proto(record)

    async def ListWebhookDeliveries(
        self, request: audit_pb2.ListWebhookDeliveriesRequest, context: Context
    ) -> audit_pb2.ListWebhookDeliveriesResponse:
        state, after, limit = convert.webhook_page_from_proto(request)
        # One extra row tells whether another page exists without a count query.
        found = await self._deliveries.page(state, after, limit + 1)
        return convert.webhook_page_to_proto(found[:limit], len(found) > limit)
