"""Wrapping grpc method handlers of every shape with one async context manager."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]
Around = Callable[[grpc.aio.ServicerContext[Any, Any]], AbstractAsyncContextManager[None]]


def wrap_handler(handler: Handler, around: Around) -> Handler:
    """The same handler, each call running inside `around(context)`."""

    def unary(behavior: Any) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with around(context):
                return await behavior(request, context)

        return call

    def streaming(behavior: Any) -> Any:
        if not inspect.isasyncgenfunction(behavior):
            # Some streaming handlers (grpc's health Watch) write through context.write;
            # others are plain methods returning an async iterator (a delegate).
            async def written(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                async with around(context):
                    result = behavior(request, context)
                    if inspect.isawaitable(result):
                        await result
                        return
                    async for response in result:
                        await context.write(response)

            return written

        async def call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with around(context):
                async for response in behavior(request, context):
                    yield response

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
