"""Wrapping grpc method handlers of every shape with one async context manager.

Two grpc.aio hazards are handled here once, for every method and interceptor:
- a call's `ServicerContext` is valid only while grpc's task for that call runs: once the call
  ends grpc releases it, and `peer()`, `write()` or `abort()` on it then dereference a freed
  call and kill the process in cygrpc. So every wrapped method runs to its end inside that
  task, streams included, and what interceptors need afterwards lives in a `CallRecord`.
- a request deserializer that raises makes grpc answer UNKNOWN with the Python exception in the
  message; here it never raises, and the method answers INVALID_ARGUMENT instead.
"""

from __future__ import annotations

import functools
import inspect
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NoReturn

import grpc
from google.protobuf import descriptor_pool

from hitl_grpc.domain.request_id import bind as bind_request_id

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
ServerInterceptor = grpc.aio.ServerInterceptor

Context = grpc.aio.ServicerContext[Any, Any]
# None for a method no servicer implements: grpc answers UNIMPLEMENTED.
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]
Around = Callable[[Context], AbstractAsyncContextManager[None]]
Deserializer = Callable[[bytes], Any]


@dataclass
class CallRecord:
    """What one call's interceptors learn while it is live, kept for after it may have ended."""

    peer: str
    request_id: str
    code: grpc.StatusCode | None = None


# Per call: each call runs in its own grpc task, and every wrapper of it in that task.
_record: ContextVar[CallRecord | None] = ContextVar("hitl_call_record", default=None)
REQUEST_ID_HEADER: Final = "x-request-id"
# A caller's id is kept when it is this short and plain (it lands in logs verbatim).
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _REQUEST_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


def begin_call(context: Context) -> CallRecord:
    """Starts the current call's record, reading what it needs while grpc holds the call:
    the peer, and the caller's x-request-id (or a new one)."""
    record = CallRecord(peer=context.peer() or "", request_id=_request_id(context))
    _record.set(record)
    # The audit rows this call writes carry the id its access-log line shows.
    bind_request_id(record.request_id)
    return record


def current_record() -> CallRecord | None:
    """The current call's record, once the outermost interceptor has begun it."""
    return _record.get()


async def abort(
    context: Context, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()
) -> NoReturn:
    """Ends the call with this status, noting the code in the call's record."""
    record = _record.get()
    if record is not None:
        record.code = code
    await context.abort(code, details, trailing_metadata)


class UnparseableRequest(Exception):
    """The request bytes are not a message of the method's request type."""

    def __init__(self, message_name: str) -> None:
        self.message = f"request is not a valid {message_name}"
        super().__init__(self.message)


_UNPARSEABLE: Final = object()


class _SafeDeserializer:
    """A deserializer grpc never sees fail: bad bytes become the _UNPARSEABLE marker."""

    def __init__(self, parse: Deserializer | None) -> None:
        self._parse = parse

    def __call__(self, raw: bytes) -> Any:
        if self._parse is None:
            return raw
        try:
            return self._parse(raw)
        except Exception:
            return _UNPARSEABLE


class _RecordingContext:
    """The context a servicer sees: its own aborts (grpc's health Check) note their code too."""

    def __init__(self, context: Context) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        await abort(self._context, code, details, trailing_metadata)


class _CheckedRequests:
    """A client stream that raises UnparseableRequest at the first message that did not parse."""

    def __init__(self, requests: AsyncIterator[Any], message_name: str) -> None:
        self._requests = requests
        self._message_name = message_name

    def __aiter__(self) -> _CheckedRequests:
        return self

    async def __anext__(self) -> Any:
        request = await self._requests.__anext__()
        if request is _UNPARSEABLE:
            raise UnparseableRequest(self._message_name)
        return request


# Interceptors wrap per call; only methods a servicer implements get here, so this stays small.
@functools.cache
def _request_name(method: str) -> str:
    """`hitl.v1.LoginRequest` for "/hitl.v1.AuthService/Login"."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    except KeyError:
        return "request message"
    return str(found.input_type.full_name)


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


def wrap_handler(handler: Handler, around: Around, method: str) -> Handler:
    """The same handler, each call running inside `around(context)` within grpc's call task."""
    # The first wrap (the innermost, next to the servicer) owns request parsing and the
    # servicer's context; outer wraps leave both alone.
    innermost = not isinstance(handler.request_deserializer, _SafeDeserializer)
    name = _request_name(method) if innermost else ""

    def checked(request: Any) -> Any:
        if innermost and request is _UNPARSEABLE:
            raise UnparseableRequest(name)
        return request

    def checked_stream(requests: Any) -> Any:
        return _CheckedRequests(requests, name) if innermost else requests

    def inner(context: Context) -> Any:
        return _RecordingContext(context) if innermost else context

    def unary(behavior: Any, parse: Callable[[Any], Any]) -> Any:
        async def call(request: Any, context: Context) -> Any:
            async with around(context):
                return await behavior(parse(request), inner(context))

        return call

    def streaming(behavior: Any, parse: Callable[[Any], Any]) -> Any:
        # Always the reader/writer form: grpc's own generator loop would leave a cancelled
        # generator for the finalizer (see _write_all). grpc's health Watch writes through
        # context.write itself and returns nothing.
        async def call(request: Any, context: Context) -> None:
            async with around(context):
                result = behavior(parse(request), inner(context))
                if inspect.isawaitable(result):
                    await result
                    return
                await _write_all(result, context)

        return call

    args = {
        "request_deserializer": (
            _SafeDeserializer(handler.request_deserializer)
            if innermost
            else handler.request_deserializer
        ),
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary, checked), **args)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            streaming(handler.unary_stream, checked), **args
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            unary(handler.stream_unary, checked_stream), **args
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        streaming(handler.stream_stream, checked_stream), **args
    )


class WrappingInterceptor(ServerInterceptor):
    """Runs every call of a method inside the context `around_for(method)` gives."""

    def around_for(self, method: str) -> Around:
        """The context each call of `method` runs in."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return wrap_handler(handler, self.around_for(method), method)
