"""What ops rely on: health, reflection, access log, metrics, limits and safe errors."""

import asyncio
import io
import json
import logging
import re
import threading
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hitl.v1 import auth_pb2, decision_pb2

from hitl_grpc.api.errors import status_of
from hitl_grpc.domain import errors
from hitl_grpc.domain.values import Role
from hitl_grpc.runtime.observability import WRITER_THREAD, configure_logging
from hitl_grpc.runtime.server import SERVICE_NAMES
from tests.decisions_support import submit, wait_until
from tests.harness import Harness, ServerFactory, bearer


async def test_health_reports_serving_for_the_server_and_each_service(server: Harness) -> None:
    for name in ("", *SERVICE_NAMES):
        reply = await server.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_health_turns_not_serving_on_shutdown(make_server: ServerFactory) -> None:
    async with make_server() as harness:
        watch = harness.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        first = await asyncio.wait_for(anext(aiter(watch)), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await harness.running.health.enter_graceful_shutdown()
        second = await asyncio.wait_for(anext(aiter(watch)), 5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_the_three_services(server: Harness) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for reply in stub.ServerReflectionInfo(requests(), timeout=5):
        names |= {s.name for s in reply.list_services_response.service}
    assert {"hitl.v1.AuthService", "hitl.v1.DecisionService", "hitl.v1.AuditService"} <= names
    assert "grpc.health.v1.Health" in names


async def _reflect(
    server: Harness, path: str, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    call = server.channel.stream_stream(
        path,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield request

    replies = [reply async for reply in call(requests(), timeout=5)]
    assert len(replies) == 1
    return replies[0]


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_answers_under_v1_and_v1alpha(server: Harness, version: str) -> None:
    path = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    listed = await _reflect(server, path, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "hitl.v1.DecisionService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    found = await _reflect(
        server,
        path,
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        ),
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    v1 = next(f for f in files if f.name == "grpc/reflection/v1/reflection.proto")
    assert v1.package == "grpc.reflection.v1"
    method = v1.service[0].method[0]
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"


async def test_each_rpc_logs_one_structured_line(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    user = await server.create_user(Role.ANALYST)
    token = (await server.login(user.username)).tokens.access_token
    caplog.set_level(logging.INFO, logger="hitl_grpc.rpc")
    caplog.clear()
    await server.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(),
        metadata=(*bearer(token), ("x-request-id", "candi-7f3a.1")),
        timeout=5,
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await server.login(user.username, "not-the-password")
    lines = [vars(r) for r in caplog.records if r.name == "hitl_grpc.rpc"]
    assert [(f["method"], f["code"]) for f in lines] == [
        ("/hitl.v1.AuthService/GetCurrentUser", "OK"),
        ("/hitl.v1.AuthService/Login", "UNAUTHENTICATED"),
    ]
    assert lines[0]["principal"] == user.username
    assert lines[0]["peer"].startswith("ipv4:127.0.0.1:")
    assert lines[0]["duration_ms"] >= 0
    # The caller's request id is kept; a call without one gets its own.
    assert lines[0]["request_id"] == "candi-7f3a.1"
    assert re.fullmatch(r"[0-9a-f]{32}", lines[1]["request_id"])


# Values a client can send (grpc itself refuses control characters in metadata).
@pytest.mark.parametrize("sent", ["x" * 129, "has space", 'quote"d', "semi;colon", "{json}"])
async def test_a_request_id_that_is_not_short_and_plain_is_replaced(
    server: Harness, caplog: pytest.LogCaptureFixture, sent: str
) -> None:
    caplog.set_level(logging.INFO, logger="hitl_grpc.rpc")
    caplog.clear()
    metadata = (("x-request-id", sent),)
    await server.health.Check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=5)
    (line,) = [vars(r) for r in caplog.records if r.name == "hitl_grpc.rpc"]
    assert re.fullmatch(r"[0-9a-f]{32}", line["request_id"])


async def test_a_sample_of_zero_logs_only_failed_calls_and_still_counts_every_call(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_server(access_log_sample=0.0, metrics_listen="127.0.0.1:0") as harness:
        url = f"http://127.0.0.1:{harness.running.metrics_port}/metrics"
        caplog.set_level(logging.INFO, logger="hitl_grpc.rpc")
        caplog.clear()
        for _ in range(3):
            await harness.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), timeout=5)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED

        def access_lines() -> list[tuple[str, str]]:
            rpc = [vars(r) for r in caplog.records if r.name == "hitl_grpc.rpc"]
            return [(f["method"], f["code"]) for f in rpc]

        async def logged() -> bool:
            # An aborted call's status reaches the client before its line is made.
            return bool(access_lines())

        await wait_until(logged)

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())

        body = await asyncio.to_thread(fetch)
    assert access_lines() == [("/hitl.v1.AuthService/GetCurrentUser", "UNAUTHENTICATED")]
    assert _sample(body, 'hitl_rpc_total{code="OK",method="/grpc.health.v1.Health/Check"}') == 3
    duration = 'hitl_rpc_duration_seconds_count{method="/grpc.health.v1.Health/Check"}'
    assert _sample(body, duration) == 3


async def test_access_lines_are_made_and_written_on_the_log_writer_thread(
    server: Harness,
) -> None:
    made: list[tuple[str, str]] = []
    written: list[tuple[str, str]] = []
    plain = logging.getLogRecordFactory()

    def recording(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = plain(*args, **kwargs)
        made.append((record.name, threading.current_thread().name))
        return record

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            written.append((threading.current_thread().name, text))
            return len(text)

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logging.setLogRecordFactory(recording)
    writer = configure_logging("INFO", stream=Stream())
    try:
        await server.health.Check(
            health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "off-loop-1"),), timeout=5
        )
    finally:
        writer.stop()  # writes what is queued
        logging.setLogRecordFactory(plain)
        root.handlers[:], root.level = handlers, level
    loop_thread = threading.current_thread().name
    rpc_made = [thread for name, thread in made if name == "hitl_grpc.rpc"]
    assert rpc_made == [WRITER_THREAD]
    assert loop_thread != WRITER_THREAD
    [(thread, text)] = [
        (thread, line)
        for thread, chunk in written
        for line in chunk.splitlines()
        if "off-loop-1" in line
    ]
    assert thread == WRITER_THREAD
    line = json.loads(text)
    assert list(line) == [
        "time",
        "level",
        "logger",
        "msg",
        "method",
        "code",
        "duration_ms",
        "principal",
        "peer",
        "request_id",
    ]
    assert (line["logger"], line["msg"], line["code"]) == ("hitl_grpc.rpc", "rpc", "OK")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", line["time"])
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


async def test_metrics_endpoint_counts_rpcs(make_server: ServerFactory) -> None:
    async with make_server(metrics_listen="127.0.0.1:0") as harness:
        await harness.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        url = f"http://127.0.0.1:{harness.running.metrics_port}/metrics"

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())

        body = await asyncio.to_thread(fetch)
    assert 'hitl_rpc_total{code="OK",method="/grpc.health.v1.Health/Check"} 1.0' in body
    assert "hitl_rpc_duration_seconds_bucket" in body


def _sample(body: str, name: str) -> float | None:
    """The value of one sample line (`name` with its labels), if the body has it."""
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_show_build_process_queue_watchers_streams_and_probes(
    make_server: ServerFactory,
) -> None:
    async with make_server(
        metrics_listen="127.0.0.1:0", sweep_interval_s=0.1, db_check_interval_s=0.1
    ) as harness:
        url = f"http://127.0.0.1:{harness.running.metrics_port}/metrics"

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())

        service = await harness.as_role(Role.SERVICE)
        analyst = await harness.as_role(Role.ANALYST)
        await submit(harness, service, priority=decision_pb2.PRIORITY_CRITICAL)
        await submit(harness, service, priority=decision_pb2.PRIORITY_LOW)
        watch = harness.decisions.WatchPending(
            decision_pb2.WatchPendingRequest(), metadata=analyst, timeout=30
        )
        await anext(aiter(watch))  # the stream is open on the server

        async def shows_it() -> bool:
            body = await asyncio.to_thread(fetch)
            return (
                _sample(body, 'hitl_queue_pending{priority="CRITICAL"}') == 1
                and _sample(body, 'hitl_queue_open{status="PENDING"}') == 2
                and _sample(body, "hitl_watchers") == 1
                and _sample(body, 'hitl_rpc_active{method="/hitl.v1.DecisionService/WatchPending"}')
                == 1
            )

        await wait_until(shows_it)
        watch.cancel()

        async def stream_ended() -> bool:
            body = await asyncio.to_thread(fetch)
            method = "/hitl.v1.DecisionService/WatchPending"
            return _sample(body, f'hitl_rpc_active{{method="{method}"}}') == 0

        await wait_until(stream_ended)
        body = await asyncio.to_thread(fetch)
    assert _sample(body, 'hitl_queue_pending{priority="LOW"}') == 1
    assert _sample(body, 'hitl_queue_open{status="IN_REVIEW"}') == 0
    assert 'hitl_build_info{grpcio="' in body
    assert "process_cpu_seconds_total" in body
    assert (_sample(body, "hitl_db_probe_seconds_count") or 0) >= 1
    assert _sample(body, "hitl_db_connections_in_use") is not None
    assert _sample(body, 'hitl_sweeper_actions_total{action="expired"}') == 0
    # Both submits' events reached this process's fan-out, each timed from its change.
    assert (_sample(body, "hitl_event_lag_seconds_count") or 0) >= 2
    # ... by reads of the log, however many (a wake-up per commit, batched or not).
    assert (_sample(body, "hitl_event_reads_total") or 0) >= 1


async def test_oversized_request_is_resource_exhausted(server: Harness) -> None:
    huge = "p" * (server.running.settings.max_message_bytes + 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.login("admin", huge)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_invalid_field_carries_every_violation_as_bad_request() -> None:
    err = errors.InvalidField(
        [
            errors.FieldViolation("confidence", "must be 0-100"),
            errors.FieldViolation("source_ip", "not an IP"),
        ]
    )
    status = status_of(err)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    [(key, blob)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    decoded = status_pb2.Status.FromString(blob)
    bad = error_details_pb2.BadRequest()
    assert decoded.details[0].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("confidence", "must be 0-100"),
        ("source_ip", "not an IP"),
    ]


def test_rate_limited_carries_retry_info() -> None:
    status = status_of(errors.RateLimited("too many attempts", retry_after_s=2.5))
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    decoded = status_pb2.Status.FromString(status.trailing_metadata[0][1])
    retry = error_details_pb2.RetryInfo()
    assert decoded.details[0].Unpack(retry)
    assert retry.retry_delay.ToMilliseconds() == 2500


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.WrongState("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.VersionConflict("x"), grpc.StatusCode.ABORTED),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.OutOfRange("x"), grpc.StatusCode.OUT_OF_RANGE),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_error_table_matches_the_design(error: errors.DomainError, code: grpc.StatusCode) -> None:
    assert status_of(error).code is code


def test_configured_logging_writes_json_lines_with_fields_and_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    listener = configure_logging("INFO")
    try:
        emitter = logging.getLogger("hitl_grpc.example")
        emitter.info("hello %s", "there", extra={"answer": 42})
        try:
            raise ValueError("boom")
        except ValueError:
            emitter.exception("failed")
    finally:
        listener.stop()  # writes what is queued
        root.handlers[:], root.level = handlers, level
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert (first["level"], first["logger"], first["msg"]) == (
        "INFO",
        "hitl_grpc.example",
        "hello there",
    )
    assert first["answer"] == 42
    assert "time" in first
    assert second["msg"] == "failed"
    assert "ValueError: boom" in second["error"]


async def test_metrics_count_sign_ins_by_outcome_lockouts_and_the_oldest_item(
    make_server: ServerFactory,
) -> None:
    async with make_server(
        metrics_listen="127.0.0.1:0", sweep_interval_s=0.1, login_max_failures=2
    ) as harness:
        url = f"http://127.0.0.1:{harness.running.metrics_port}/metrics"

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())

        await harness.create_user(Role.ANALYST, "rita")
        await harness.login("rita")
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await harness.login("rita", "wrong password")
            assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.login("rita")
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await submit(harness, await harness.as_role(Role.SERVICE))

        async def counted() -> bool:
            body = await asyncio.to_thread(fetch)
            return (_sample(body, "hitl_queue_oldest_open_age_seconds") or 0) > 0

        await wait_until(counted)
        body = await asyncio.to_thread(fetch)
    sign_ins = "hitl_sign_ins_total{outcome="
    assert _sample(body, sign_ins + '"succeeded",step="password"}') == 2  # rita, the service
    assert _sample(body, sign_ins + '"failed",step="password"}') == 2
    assert _sample(body, sign_ins + '"locked",step="password"}') == 1
    assert _sample(body, 'hitl_lockouts_total{scope="user"}') == 1
    assert _sample(body, 'hitl_lockouts_total{scope="peer"}') is None
    # Seconds since the one open item was submitted, not since some other epoch.
    assert 0 < (_sample(body, "hitl_queue_oldest_open_age_seconds") or 0) < 60
