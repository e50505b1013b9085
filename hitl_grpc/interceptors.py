"""What the one layer around every method handler (runtime/calls.py) is built from.

Two grpc.aio hazards are handled here once, for every method:
- a call's `ServicerContext` is valid only while grpc's task for that call runs: once the call
  ends grpc releases it, and `peer()`, `write()` or `abort()` on it then dereference a freed
  call and kill the process in cygrpc. So every wrapped method runs to its end inside that
  task, streams included, and what the layer needs afterwards lives in a `CallRecord`.
- a request deserializer that raises makes grpc answer UNKNOWN with the Python exception in the
  message; here it never raises, and the method answers INVALID_ARGUMENT instead.
"""

from __future__ import annotations

import functools
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


class SafeDeserializer:
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


class RecordingContext:
    """The context a servicer sees: its own aborts (grpc's health Check) note their code too."""

    def __init__(self, context: Context) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()
    ) -> NoReturn:
        await abort(self._context, code, details, trailing_metadata)


class CheckedRequests:
    """A client stream that raises UnparseableRequest at the first message that did not parse."""

    def __init__(self, requests: AsyncIterator[Any], message_name: str) -> None:
        self._requests = requests
        self._message_name = message_name

    def __aiter__(self) -> CheckedRequests:
        return self

    async def __anext__(self) -> Any:
        request = await self._requests.__anext__()
        if request is _UNPARSEABLE:
            raise UnparseableRequest(self._message_name)
        return request


# Only methods a servicer implements get here, so this stays small.
@functools.cache
def request_name(method: str) -> str:
    """`hitl.v1.LoginRequest` for "/hitl.v1.AuthService/Login"."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.strip("/").replace("/", "."))
    except KeyError:
        return "request message"
    return str(found.input_type.full_name)


def checked(request: Any, message_name: str) -> Any:
    """The request, or UnparseableRequest if its bytes did not parse."""
    if request is _UNPARSEABLE:
        raise UnparseableRequest(message_name)
    return request
