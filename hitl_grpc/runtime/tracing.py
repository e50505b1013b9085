"""Tracing, off unless HITL_OTLP_ENDPOINT is set: a server span per RPC, a span per SQL
statement under it, exported over OTLP/HTTP in batches from a thread of their own.

The server span is the call layer's (runtime/calls.py), not
opentelemetry-instrumentation-grpc's: that one iterates a streaming method as a generator,
while ours write through `context.write` and must end inside grpc's call task (see
interceptors.py). A caller's W3C `traceparent` metadata makes its trace the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

EXPORT_TIMEOUT_S: Final = 5.0
# How long a stopping server waits for its last spans to reach the collector.
FLUSH_S: Final = 5.0
# The codes that are the server's failure, not the caller's (OpenTelemetry's gRPC rules).
SERVER_FAULTS: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class Tracing:
    """One server's tracer provider and exporter (no global provider: tests run several)."""

    def __init__(self, endpoint: str, *, version: str) -> None:
        resource = Resource.create({"service.name": "hitl-grpc", "service.version": version})
        self._provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", timeout=EXPORT_TIMEOUT_S)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer: Tracer = self._provider.get_tracer("hitl_grpc", version)

    async def close(self) -> None:
        """Exports what is left, for at most FLUSH_S (a collector that is down costs that)."""
        # Past the bound the exporter's thread gives up on its own; the last spans are lost.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self._provider.shutdown), FLUSH_S)


def _carrier(metadata: Any) -> dict[str, str]:
    return {key: value for key, value in metadata or () if isinstance(value, str)}


class _Span:
    """One call's open server span, and the context token that made it current."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token


class MethodTracing:
    """Opens and ends the SERVER span of each call of one method."""

    def __init__(self, tracer: Tracer, method: str) -> None:
        self._tracer = tracer
        self._name = method.strip("/")
        service, _, rpc = self._name.partition("/")
        self._attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}

    def begin(self, context: grpc.aio.ServicerContext[Any, Any]) -> _Span:
        """Starts the call's span, a child of the caller's trace if it sent one, as current."""
        parent = propagate.extract(_carrier(context.invocation_metadata()))
        span = self._tracer.start_span(
            self._name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=self._attributes,
        )
        return _Span(span, otel_context.attach(trace.set_span_in_context(span)))

    def end(self, opened: _Span, code: grpc.StatusCode) -> None:
        """Ends the span with the call's final gRPC code."""
        otel_context.detach(opened.token)  # type: ignore[arg-type]  # attach's own token
        span = opened.span
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()
