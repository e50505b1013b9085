"""SQL statements and pool checkouts as OpenTelemetry spans, children of the current RPC's."""

from __future__ import annotations

from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from opentelemetry.metrics import NoOpMeter
from opentelemetry.trace import Tracer
from sqlalchemy.ext.asyncio import AsyncEngine


def trace_statements(engine: AsyncEngine, tracer: Tracer) -> None:
    """Spans for every statement `engine` runs from now on, through `tracer`.

    The instrumentation's per-engine tracer rather than its instrumentor: the instrumentor
    is one per process and patches `create_engine`, where each server traces its own engine.
    """
    unused = NoOpMeter("hitl_grpc").create_up_down_counter("db.client.connections.usage")
    EngineTracer(tracer, engine.sync_engine, unused)  # type: ignore[no-untyped-call]  # untyped
