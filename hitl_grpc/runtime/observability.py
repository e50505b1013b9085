"""One structured log line and Prometheus samples per RPC."""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from queue import SimpleQueue
from typing import Any, Final

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter

from hitl_grpc.auth.principal import current_principal_or_none
from hitl_grpc.interceptors import Around, CallRecord, WrappingInterceptor, begin_call

log = logging.getLogger("hitl_grpc.rpc")


class _Handoff(logging.handlers.QueueHandler):
    """Hands records to the writer thread with their text fixed now, their fields intact."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        return record


_TRACEBACKS: Final = logging.Formatter()


def configure_logging(
    level: str, fields: dict[str, object] | None = None
) -> logging.handlers.QueueListener:
    """JSON lines on stderr at the given level, written by a thread of their own so the
    event loop never waits on stderr; stop the returned listener to flush before exit.

    `fields` go in every line (a worker's index and pid)."""
    writer = logging.StreamHandler()
    writer.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            datefmt="%Y-%m-%dT%H:%M:%S%z",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "message": "msg",
                "exc_info": "error",
            },
            json_ensure_ascii=False,
            static_fields=fields,
        )
    )
    queue: SimpleQueue[logging.LogRecord] = SimpleQueue()
    listener = logging.handlers.QueueListener(queue, writer)
    root = logging.getLogger()
    root.handlers[:] = [_Handoff(queue)]
    root.setLevel(level)
    listener.start()
    return listener


class RpcMetrics:
    """Per-server Prometheus collectors (no global registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "hitl_rpc_total", "RPCs handled", ["method", "code"], registry=registry
        )
        self.duration = Histogram(
            "hitl_rpc_duration_seconds",
            "RPC handling time",
            ["method"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
        )
        # Streams are seen while open, not only once they end.
        self.active = Gauge(
            "hitl_rpc_active",
            "RPCs in progress",
            ["method"],
            registry=registry,
            multiprocess_mode="livesum",
        )


class AccessLogInterceptor(WrappingInterceptor):
    """Outermost: sees the final status of every call."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def around_for(self, method: str) -> Around:
        """Times each call of `method` and logs its outcome."""
        metrics = self._metrics

        @asynccontextmanager
        async def timed(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
            started = time.perf_counter()
            record = begin_call(context)
            code = grpc.StatusCode.OK
            active = metrics.active.labels(method)
            active.inc()
            try:
                yield
            except BaseException as exc:
                code = final_code(record, exc)
                raise
            finally:
                # Only the record from here on: the call may have ended, and grpc.aio
                # segfaults on a context whose call it has released.
                elapsed = time.perf_counter() - started
                active.dec()
                metrics.calls.labels(method, code.name).inc()
                metrics.duration.labels(method).observe(elapsed)
                principal = current_principal_or_none()
                log.info(
                    "rpc",
                    extra={
                        "method": method,
                        "code": code.name,
                        "duration_ms": round(elapsed * 1000, 3),
                        "principal": principal.username if principal else "",
                        "peer": record.peer,
                        "request_id": record.request_id,
                    },
                )

        return timed


def final_code(record: CallRecord, exc: BaseException) -> grpc.StatusCode:
    """The status a call that raised `exc` ended with."""
    # The error table records what it aborted with; a cancelled call or a crash has no code.
    if record.code is not None:
        return record.code
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
