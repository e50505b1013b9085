"""One structured log line and Prometheus samples per RPC, and the thread that writes logs."""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import random
import sys
import threading
import time
from dataclasses import dataclass
from queue import Empty, SimpleQueue
from typing import Final, TextIO

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pythonjsonlogger.json import JsonFormatter

from hitl_grpc.auth.principal import current_principal_or_none
from hitl_grpc.interceptors import CallRecord

ACCESS_LOGGER: Final = "hitl_grpc.rpc"
WRITER_THREAD: Final = "hitl-log-writer"
log = logging.getLogger(ACCESS_LOGGER)
_ROOT: Final = logging.getLogger()


@dataclass(frozen=True, slots=True)
class AccessLine:
    """One call's access-log fields as the call left them; the writer thread makes the
    record and its text."""

    at: float  # time.time() when the call ended
    method: str
    code: str
    elapsed_s: float
    principal: str
    peer: str
    request_id: str


class _Handoff(logging.handlers.QueueHandler):
    """Hands records to the writer thread with their text fixed now, their fields intact."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.msg, record.args = record.getMessage(), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        return record


_TRACEBACKS: Final = logging.Formatter()
_STOP: Final = object()
_Queued = logging.LogRecord | AccessLine | object


def _access_record(line: AccessLine) -> logging.LogRecord:
    """The record `log.info("rpc", extra=...)` would have made when the call ended."""
    record = logging.getLogRecordFactory()(
        ACCESS_LOGGER, logging.INFO, __file__, 0, "rpc", None, None
    )
    record.created = line.at
    record.msecs = int((line.at - int(line.at)) * 1000) + 0.0
    record.relativeCreated = (line.at - logging._startTime) * 1000  # type: ignore[attr-defined]  # logging's own start
    record.__dict__.update(
        method=line.method,
        code=line.code,
        duration_ms=round(line.elapsed_s * 1000, 3),
        principal=line.principal,
        peer=line.peer,
        request_id=line.request_id,
    )
    return record


class LogWriter:
    """The thread that turns queued records and access lines into text and writes them.

    It drains what the queue holds and writes it in one go, so a busy server pays one write
    (and one wake-up of this thread) per batch, not per line.
    """

    def __init__(self, queue: SimpleQueue[_Queued], handler: logging.StreamHandler[TextIO]):
        self._queue = queue
        self._handler = handler
        self._thread = threading.Thread(target=self._run, name=WRITER_THREAD, daemon=True)

    def start(self) -> None:
        """Starts writing."""
        self._thread.start()

    def stop(self) -> None:
        """Writes everything queued so far, then ends the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        queue, handler = self._queue, self._handler
        while True:
            batch = [queue.get()]
            try:
                while True:
                    batch.append(queue.get_nowait())
            except Empty:
                pass
            lines: list[str] = []
            stopping = False
            for item in batch:
                if item is _STOP:
                    stopping = True
                    continue
                record = _access_record(item) if isinstance(item, AccessLine) else item
                assert isinstance(record, logging.LogRecord)
                try:
                    lines.append(handler.format(record) + handler.terminator)
                except Exception:
                    handler.handleError(record)
            if lines:
                handler.acquire()
                try:
                    handler.stream.write("".join(lines))
                    handler.stream.flush()
                except Exception:
                    handler.handleError(logging.makeLogRecord({"msg": "log write failed"}))
                finally:
                    handler.release()
            if stopping:
                return


def configure_logging(
    level: str, fields: dict[str, object] | None = None, stream: TextIO | None = None
) -> LogWriter:
    """JSON lines on stderr (or `stream`) at the given level, made and written by a thread of
    their own so the event loop never formats a line or waits on stderr; stop the returned
    writer to flush before exit.

    `fields` go in every line (a worker's index and pid)."""
    writer = logging.StreamHandler(stream if stream is not None else sys.stderr)
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
    queue: SimpleQueue[_Queued] = SimpleQueue()
    thread = LogWriter(queue, writer)
    _ROOT.handlers[:] = [_Handoff(queue)]
    _ROOT.setLevel(level)
    thread.start()
    return thread


def _handoff_queue() -> SimpleQueue[_Queued] | None:
    """The writer thread's queue, when configure_logging's hand-off is where access lines go
    and nothing else would see them on the way (a test's capture handler, a filter)."""
    handlers = _ROOT.handlers
    if len(handlers) != 1 or log.handlers or log.filters:
        return None
    handoff = handlers[0]
    if type(handoff) is not _Handoff or handoff.filters:
        return None
    queue: SimpleQueue[_Queued] = handoff.queue  # type: ignore[assignment]  # ours, above
    return queue


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


class MethodLog:
    """The samples and the access-log line of each call of one method."""

    def __init__(self, metrics: RpcMetrics, method: str, sample: float) -> None:
        self._metrics = metrics
        self._method = method
        self._sample = sample
        self.active = metrics.active.labels(method)
        # Made on first use, as labels() would per call: a series appears once it has a value.
        self._duration: Histogram | None = None
        self._calls: dict[grpc.StatusCode, Counter] = {}

    def ended(self, code: grpc.StatusCode, elapsed_s: float, record: CallRecord) -> None:
        """Counts the call and logs it: every failed call, a `sample` of the OK ones."""
        self.active.dec()
        calls = self._calls.get(code)
        if calls is None:
            calls = self._calls[code] = self._metrics.calls.labels(self._method, code.name)
        calls.inc()
        if self._duration is None:
            self._duration = self._metrics.duration.labels(self._method)
        self._duration.observe(elapsed_s)
        if code is grpc.StatusCode.OK and self._sample < 1 and random.random() >= self._sample:
            return
        if not log.isEnabledFor(logging.INFO):
            return
        principal = current_principal_or_none()
        username = principal.username if principal else ""
        queue = _handoff_queue()
        if queue is not None:
            queue.put(
                AccessLine(
                    time.time(),
                    self._method,
                    code.name,
                    elapsed_s,
                    username,
                    record.peer,
                    record.request_id,
                )
            )
            return
        log.info(
            "rpc",
            extra={
                "method": self._method,
                "code": code.name,
                "duration_ms": round(elapsed_s * 1000, 3),
                "principal": username,
                "peer": record.peer,
                "request_id": record.request_id,
            },
        )


class AccessLog:
    """The per-RPC samples and access-log lines of one server."""

    def __init__(self, metrics: RpcMetrics, *, sample: float = 1.0) -> None:
        self._metrics = metrics
        self._sample = sample

    def for_method(self, method: str) -> MethodLog:
        """What each call of `method` counts and logs through."""
        return MethodLog(self._metrics, method, self._sample)


def final_code(record: CallRecord, exc: BaseException) -> grpc.StatusCode:
    """The status a call that raised `exc` ended with."""
    # The error table records what it aborted with; a cancelled call or a crash has no code.
    if record.code is not None:
        return record.code
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
