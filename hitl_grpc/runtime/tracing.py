"""Tracing, off unless HITL_OTLP_ENDPOINT is set: a server span per RPC, a span per SQL
statement under it, exported over OTLP/HTTP in batches from a thread of their own.

The server span is this interceptor's, not opentelemetry-instrumentation-grpc's: that one
iterates a streaming method as a generator, while ours write through `context.write` and
must end inside grpc's call task (see interceptors.py). A caller's W3C `traceparent`
metadata makes its trace the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import grpc
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from hitl_grpc.interceptors import Around, WrappingInterceptor, current_record
from hitl_grpc.runtime.observability import final_code

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


class TracingInterceptor(WrappingInterceptor):
    """A SERVER span around each call, its status the call's final gRPC code."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def around_for(self, method: str) -> Around:
        """Traces each call of `method`."""
        name = method.strip("/")
        service, _, rpc = name.partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
        tracer = self._tracer

        @asynccontextmanager
        async def traced(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            parent = propagate.extract(_carrier(context.invocation_metadata()))
            with tracer.start_as_current_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                code = grpc.StatusCode.OK
                try:
                    yield
                except BaseException as exc:
                    record = current_record()
                    code = final_code(record, exc) if record else grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if code in SERVER_FAULTS:
                        span.set_status(Status(StatusCode.ERROR, code.name))

        return traced
