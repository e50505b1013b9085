"""DecisionService: translation to and from the decision operations, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import grpc
from hitl.v1 import decision_pb2, decision_pb2_grpc

from hitl_grpc.api import convert, pages
from hitl_grpc.api.errors import code_number
from hitl_grpc.api.watch import WatchServicer
from hitl_grpc.auth import principal as principal_ctx
from hitl_grpc.auth.principal import current_principal
from hitl_grpc.domain import errors
from hitl_grpc.domain.decisions import DecisionOperations
from hitl_grpc.domain.queue import parse_page_request
from hitl_grpc.domain.validation import parse_analysis_id
from hitl_grpc.domain.values import parse_username

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler

SERVICE: Final = "hitl.v1.DecisionService"
# Their messages reach grpc already serialized: watch events encoded once per event for
# every watcher of it (api/watch.py), pages put together from decisions serialized once
# per version (api/pages.py). grpc sends bytes as they are when a method has no serializer.
SERIALIZED_BY_SERVICER: Final = frozenset({"WatchPending", "WatchDecision", "ListPendingDecisions"})

# The methods whose access check their own statement makes, given the store's hot path:
# reads always, the submit unless it must also queue webhooks (which that statement does not).
FOLDED_READS: Final = frozenset({f"/{SERVICE}/ListPendingDecisions"})
FOLDED_SUBMITS: Final = frozenset({f"/{SERVICE}/SubmitDecision"})

# Kept back from the caller's deadline so UNAVAILABLE reaches it before DEADLINE_EXCEEDED.
DEADLINE_MARGIN_S: Final = 0.05


# Kept back from the message limit for what a page holds besides its items (the page
# token, under 2 KiB) and for gRPC's own framing.
PAGE_MARGIN_BYTES: Final = 8192


# Call metadata that may carry a step-up TOTP code instead of the request's otp field.
OTP_METADATA: Final = "x-hitl-otp"


def _version(request: Any) -> int | None:
    return int(request.expected_version) if request.HasField("expected_version") else None


def _epoch(request: Any) -> int | None:
    return int(request.lease_epoch) if request.HasField("lease_epoch") else None


def _otp(request: Any, context: Context) -> str:
    """The step-up code: the request's field, else the x-hitl-otp metadata."""
    if request.otp:
        return str(request.otp)
    for key, value in context.invocation_metadata() or ():
        if key == OTP_METADATA:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return ""


class DecisionServicer(decision_pb2_grpc.DecisionServiceServicer):
    """The decision queue; the streaming half is the WatchServicer's."""

    def __init__(
        self,
        decisions: DecisionOperations,
        watch: WatchServicer,
        *,
        db_timeout_s: float,
        max_message_bytes: int,
    ) -> None:
        self._decisions = decisions
        self._watch = watch
        self._db_timeout_s = db_timeout_s
        self._max_message_bytes = max_message_bytes
        # Serialized decisions by version, shared by every page this process serves.
        self.rendered = pages.RenderedDecisions()

    async def _bounded(self, context: Context, work: Awaitable[T]) -> T:
        """The work, or UNAVAILABLE once the database has had the time the caller allows."""
        remaining = context.time_remaining()
        budget = self._db_timeout_s
        if remaining is not None:
            budget = min(budget, remaining - DEADLINE_MARGIN_S)
        try:
            async with asyncio.timeout(max(budget, 0.001)):
                return await work
        except TimeoutError:
            raise errors.Unavailable("the database did not answer in time, retry later") from None

    async def SubmitDecision(
        self, request: decision_pb2.SubmitDecisionRequest, context: Context
    ) -> decision_pb2.SubmitDecisionResponse:
        draft = convert.analysis_draft_from_proto(request)
        check = principal_ctx.deferred_check()
        if check is None:
            decision, created = await self._bounded(
                context, self._decisions.submit(draft, by=current_principal())
            )
        else:
            decision, created, by = await self._bounded(
                context, self._decisions.submit_checked(draft, check)
            )
            principal_ctx.bind(by, by.peer)
        return convert.submit_reply(decision, created)

    async def GetDecision(
        self, request: decision_pb2.GetDecisionRequest, context: Context
    ) -> decision_pb2.GetDecisionResponse:
        analysis_id = parse_analysis_id(request.analysis_id)
        decision = await self._bounded(
            context, self._decisions.get(analysis_id, by=current_principal())
        )
        return convert.decision_reply(decision_pb2.GetDecisionResponse, decision)

    # A serialized ListPendingDecisionsResponse, not a message: see SERIALIZED_BY_SERVICER.
    async def ListPendingDecisions(  # type: ignore[override]
        self, request: decision_pb2.ListPendingDecisionsRequest, context: Context
    ) -> bytes:
        page = parse_page_request(
            priorities=[int(p) for p in request.priorities],
            statuses=[int(s) for s in request.statuses],
            page_size=request.page_size,
            page_token=request.page_token,
        )
        rendered = self.rendered
        max_bytes = self._max_message_bytes - PAGE_MARGIN_BYTES
        check = principal_ctx.deferred_check()
        if check is None:
            items, token = await self._bounded(
                context,
                self._decisions.list_pending(
                    page,
                    rendered.render,
                    pages.entry_bytes,
                    max_bytes=max_bytes,
                    cached=rendered.get,
                ),
            )
        else:
            items, token, by = await self._bounded(
                context,
                self._decisions.list_pending_checked(
                    page,
                    check,
                    rendered.get,
                    rendered.render,
                    pages.entry_bytes,
                    max_bytes=max_bytes,
                ),
            )
            principal_ctx.bind(by, by.peer)
        return pages.page_reply(items, token)

    # Serialized WatchPendingResponses, not messages: see SERIALIZED_BY_SERVICER.
    def WatchPending(  # type: ignore[override]
        self, request: decision_pb2.WatchPendingRequest, context: Context
    ) -> AsyncIterator[bytes]:
        return self._watch.WatchPending(request, context)

    # Serialized WatchDecisionResponses, not messages: see SERIALIZED_BY_SERVICER.
    def WatchDecision(  # type: ignore[override]
        self, request: decision_pb2.WatchDecisionRequest, context: Context
    ) -> AsyncIterator[bytes]:
        return self._watch.WatchDecision(request, context)

    async def ClaimDecision(
        self, request: decision_pb2.ClaimDecisionRequest, context: Context
    ) -> decision_pb2.ClaimDecisionResponse:
        analysis_id = parse_analysis_id(request.analysis_id)
        decision = await self._bounded(
            context,
            self._decisions.claim(
                analysis_id, by=current_principal(), expected_version=_version(request)
            ),
        )
        return convert.claim_reply(decision)

    async def RenewLease(
        self, request: decision_pb2.RenewLeaseRequest, context: Context
    ) -> decision_pb2.RenewLeaseResponse:
        analysis_id = parse_analysis_id(request.analysis_id)
        decision = await self._bounded(
            context,
            self._decisions.renew(analysis_id, int(request.lease_epoch), by=current_principal()),
        )
        return convert.renew_reply(decision)

    async def ReassignDecision(
        self, request: decision_pb2.ReassignDecisionRequest, context: Context
    ) -> decision_pb2.ReassignDecisionResponse:
        analysis_id = parse_analysis_id(request.analysis_id)
        assignee = parse_username(request.assignee, "assignee")
        decision = await self._bounded(
            context,
            self._decisions.reassign(
                analysis_id,
                assignee,
                by=current_principal(),
                expected_version=_version(request),
            ),
        )
        return convert.reassign_reply(decision)

    async def MakeDecisions(
        self, request: decision_pb2.MakeDecisionsRequest, context: Context
    ) -> decision_pb2.MakeDecisionsResponse:
        outcomes = await self._bounded(
            context,
            self._decisions.make_many(
                convert.bulk_items_from_proto(request),
                by=current_principal(),
                otp=_otp(request, context),
            ),
        )
        return convert.bulk_reply(outcomes, code_number)

    async def ReleaseDecision(
        self, request: decision_pb2.ReleaseDecisionRequest, context: Context
    ) -> decision_pb2.ReleaseDecisionResponse:
        analysis_id = parse_analysis_id(request.analysis_id)
        decision = await self._bounded(
            context,
            self._decisions.release(
                analysis_id,
                by=current_principal(),
                expected_version=_version(request),
                lease_epoch=_epoch(request),
            ),
        )
        return convert.decision_reply(decision_pb2.ReleaseDecisionResponse, decision)

    async def MakeDecision(
        self, request: decision_pb2.MakeDecisionRequest, context: Context
    ) -> decision_pb2.MakeDecisionResponse:
        analysis_id = parse_analysis_id(request.analysis_id)
        decision = await self._bounded(
            context,
            self._decisions.make(
                analysis_id,
                convert.verdict_draft_from_proto(request),
                by=current_principal(),
                expected_version=_version(request),
                lease_epoch=_epoch(request),
                otp=_otp(request, context),
            ),
        )
        return convert.decision_reply(decision_pb2.MakeDecisionResponse, decision)

    async def EscalateDecision(
        self, request: decision_pb2.EscalateDecisionRequest, context: Context
    ) -> decision_pb2.EscalateDecisionResponse:
        analysis_id = parse_analysis_id(request.analysis_id)
        decision = await self._bounded(
            context,
            self._decisions.escalate(
                analysis_id,
                request.reason,
                by=current_principal(),
                expected_version=_version(request),
                lease_epoch=_epoch(request),
            ),
        )
        return convert.decision_reply(decision_pb2.EscalateDecisionResponse, decision)

    async def GetDecisionStats(
        self, request: decision_pb2.GetDecisionStatsRequest, context: Context
    ) -> decision_pb2.GetDecisionStatsResponse:
        stats = await self._bounded(context, self._decisions.stats())
        return convert.stats_to_proto(stats)


class _Handlers:
    """Stands in for the server while the generated code hands it the method handlers."""

    def __init__(self) -> None:
        self.by_name: dict[str, Handler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """The same handlers again, wrapped: registered below from `by_name`."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        """Keeps the handlers by method name."""
        assert service == SERVICE
        self.by_name = dict(handlers)


def _bytes_out(handler: Handler) -> Handler:
    """The same handler, its responses sent as the servicer made them."""
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            handler.unary_unary, request_deserializer=handler.request_deserializer
        )
    assert handler.unary_stream is not None
    return grpc.unary_stream_rpc_method_handler(
        handler.unary_stream, request_deserializer=handler.request_deserializer
    )


def add_decision_service(servicer: DecisionServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer as the generated code does, but for SERIALIZED_BY_SERVICER."""
    handlers = _Handlers()
    # The generated code only calls the two registration methods _Handlers has.
    decision_pb2_grpc.add_DecisionServiceServicer_to_server(servicer, handlers)  # type: ignore[arg-type]
    by_name = {
        name: _bytes_out(handler) if name in SERIALIZED_BY_SERVICER else handler
        for name, handler in handlers.by_name.items()
    }
    assert by_name.keys() >= SERIALIZED_BY_SERVICER
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, by_name),))
    server.add_registered_method_handlers(SERVICE, by_name)
