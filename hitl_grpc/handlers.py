"""Wrapping grpc method handlers of every shape with one async context manager.

A call's `ServicerContext` is valid only while grpc's task for that call runs: once the call
ends grpc releases it, and `peer()`, `write()` or `abort()` on it then dereference a freed
call and kill the process in cygrpc. So every wrapped method runs to its end inside that
task, streams included, and what interceptors need afterwards lives in a `CallRecord`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler

Context = grpc.aio.ServicerContext[Any, Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
Around = Callable[[Context], AbstractAsyncContextManager[None]]


@dataclass
class CallRecord:
    """What one call's interceptors learn while it is live, kept for after it may have ended."""

    peer: str
    code: grpc.StatusCode | None = None


# Per call: each call runs in its own grpc task, and every wrapper of it in that task.
_record: ContextVar[CallRecord | None] = ContextVar("hitl_call_record", default=None)


def begin_call(context: Context) -> CallRecord:
    """Starts the current call's record, reading its peer while grpc still holds the call."""
    record = CallRecord(peer=context.peer() or "")
    _record.set(record)
    return record


async def abort(
    context: Context, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()
) -> NoReturn:
    """Ends the call with this status, noting the code in the call's record."""
    record = _record.get()
    if record is not None:
        record.code = code
    await context.abort(code, details, trailing_metadata)


async def _write_all(responses: AsyncIterator[Any], context: Context) -> None:
    try:
        async for response in responses:
            await context.write(response)
    finally:
        # Handed to grpc, a generator cancelled at its yield would be closed later by the
        # loop's finalizer in another task, after grpc released the call: the wrappers'
        # exits would then touch a dead context. Closed here, they run while it lives.
        aclose = getattr(responses, "aclose", None)
        if aclose is not None:
            await aclose()


def wrap_handler(handler: Handler, around: Around) -> Handler:
    """The same handler, each call running inside `around(context)` within grpc's call task."""

    def unary(behavior: Any) -> Any:
        async def call(request: Any, context: Context) -> Any:
            async with around(context):
                return await behavior(request, context)

        return call

    def streaming(behavior: Any) -> Any:
        # Always the reader/writer form: grpc's own generator loop would leave a cancelled
        # generator for the finalizer (see _write_all). grpc's health Watch writes through
        # context.write itself and returns nothing.
        async def call(request: Any, context: Context) -> None:
            async with around(context):
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    await result
                    return
                await _write_all(result, context)

        return call

    args = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **args)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **args)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **args)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **args)


class WrappingInterceptor(ServerInterceptor):
    """Runs every call of a method inside the context `around_for(method)` gives."""

    def around_for(self, method: str) -> Around:
        """The context each call of `method` runs in."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        # None for a method no servicer implements: grpc answers UNIMPLEMENTED.
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[return-value]  # grpc accepts None here
        return wrap_handler(handler, self.around_for(handler_call_details.method))
