"""The one layer around every method: access log and metrics, tracing (when configured),
error mapping, public limits and auth, in that order, then the servicer.

grpc.aio runs every interceptor's `intercept_service` on every call, so a stack of them costs
a coroutine, a new handler and a wrapper per interceptor per call, and each message of a
stream passes every wrapper. Here one interceptor wraps each method's handler once, on its
first call, into a single function that does all of it; later calls reuse that handler.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.trace import Tracer

from hitl_grpc.api.errors import answer_error
from hitl_grpc.auth.interceptor import AuthInterceptor, StreamAccess
from hitl_grpc.interceptors import (
    CheckedRequests,
    Context,
    Continuation,
    Handler,
    RecordingContext,
    SafeDeserializer,
    begin_call,
    checked,
    request_name,
)
from hitl_grpc.runtime.observability import AccessLog, final_code
from hitl_grpc.runtime.public_limits import PublicLimiter
from hitl_grpc.runtime.tracing import MethodTracing

Body = Callable[[Any, Context], Awaitable[Any]]


async def _stream(
    behavior: Any, request: Any, context: Context, watch: StreamAccess | None
) -> None:
    """Runs a streaming behaviour to its end in grpc's task for the call, writing each
    response itself: grpc's own generator loop would leave a cancelled generator to the
    loop's finalizer, which closes it in another task after grpc released the call."""
    result = None
    try:
        # grpc's health Watch writes through context.write itself and returns nothing.
        result = behavior(request, RecordingContext(context))
        if inspect.isawaitable(result):
            await result
            return
        async for response in result:
            if watch is not None and watch.due_before_delivery():
                await watch.recheck()
            await context.write(response)
    except asyncio.CancelledError:
        ended = watch.cancelled_by_us() if watch is not None else None
        if ended is None:
            raise
        raise ended from None
    finally:
        if watch is not None:
            watch.close()
        # Closed here, in the call's task, while grpc still holds the call.
        aclose = getattr(result, "aclose", None)
        if aclose is not None:
            await aclose()


class CallLayer(grpc.aio.ServerInterceptor):
    """The server's only interceptor: wraps each method's handler once and reuses it."""

    def __init__(
        self,
        access: AccessLog,
        auth: AuthInterceptor,
        *,
        limits: PublicLimiter | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self._access = access
        self._auth = auth
        self._limits = limits
        self._tracer = tracer
        # Per method: the handler the servicer gave, and its wrapped form.
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # grpc answers UNIMPLEMENTED
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Handler, method: str) -> Handler:
        streams = handler.unary_stream is not None or handler.stream_stream is not None
        logged = self._access.for_method(method)
        traced = MethodTracing(self._tracer, method) if self._tracer is not None else None
        limit = self._limits.around_for(method, streams=streams) if self._limits else None
        admit = self._auth.admission_for(method)
        open_stream = self._auth.stream_admission_for(method) if streams else None
        name = request_name(method)

        # grpc.aio runs a behaviour on the loop only if it is a coroutine function.
        def layered(body: Body) -> Body:
            async def call(request: Any, context: Context) -> Any:
                started = time.perf_counter()
                # The peer and request id are read now: the call may be gone by the end.
                record = begin_call(context)
                logged.active.inc()
                span = traced.begin(context) if traced is not None else None
                code = grpc.StatusCode.OK
                try:
                    try:
                        if limit is None:
                            return await body(request, context)
                        async with limit(context):
                            return await body(request, context)
                    except grpc.aio.AbortError:
                        raise
                    except Exception as exc:
                        await answer_error(context, exc)
                except BaseException as exc:
                    code = final_code(record, exc)
                    raise
                finally:
                    # Only the record from here on: grpc.aio segfaults on a released context.
                    if span is not None:
                        assert traced is not None
                        traced.end(span, code)
                    logged.ended(code, time.perf_counter() - started, record)

            return call

        serializers = {
            "request_deserializer": SafeDeserializer(handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        behavior: Any
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: Context) -> Any:
                await admit(context)
                return await behavior(checked(request, name), RecordingContext(context))

            return grpc.unary_unary_rpc_method_handler(layered(unary), **serializers)

        if handler.stream_unary is not None:
            behavior = handler.stream_unary

            async def client_stream(requests: Any, context: Context) -> Any:
                await admit(context)
                return await behavior(CheckedRequests(requests, name), RecordingContext(context))

            return grpc.stream_unary_rpc_method_handler(layered(client_stream), **serializers)

        if handler.unary_stream is not None:
            behavior = handler.unary_stream

            async def server_stream(request: Any, context: Context) -> None:
                if open_stream is None:
                    await admit(context)
                    await _stream(behavior, checked(request, name), context, None)
                    return
                # A stream that needs a caller judges its request first, as it always has.
                parsed = checked(request, name)
                await _stream(behavior, parsed, context, await open_stream(context))

            return grpc.unary_stream_rpc_method_handler(layered(server_stream), **serializers)

        behavior = handler.stream_stream

        async def both_stream(requests: Any, context: Context) -> None:
            parsed = CheckedRequests(requests, name)
            if open_stream is None:
                await admit(context)
                await _stream(behavior, parsed, context, None)
                return
            await _stream(behavior, parsed, context, await open_stream(context))

        return grpc.stream_stream_rpc_method_handler(layered(both_stream), **serializers)
