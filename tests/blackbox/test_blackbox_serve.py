"""The served process answers plain outside clients and exposes metrics on its own port."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import CALL_S, Served
from tests.children import SERVE
from tests.harness import bearer

# Wire-level behaviour that no store changes; the login test still runs on both.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])


def test_a_sync_client_logs_in_as_a_new_user_and_health_is_serving(served: Served) -> None:
    username, _ = served.create_user(access_pb2.ROLE_ANALYST)
    token = served.token(access_pb2.ROLE_ANALYST)
    with served.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_S
        )
        me = auth_pb2_grpc.AuthServiceStub(channel).GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=CALL_S
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert me.user.role == access_pb2.ROLE_ANALYST
    assert me.user.username != username


@SQLITE_ONLY
def test_metrics_on_port_zero_are_served_on_the_announced_port(served: Served) -> None:
    served.admin_token()
    sample = 'hitl_rpc_total{code="OK",method="/hitl.v1.AuthService/Login"} 1.0'
    assert sample in served.wait_for_metrics(sample)
    assert 'hitl_sign_ins_total{outcome="succeeded",step="password"} 1.0' in (
        served.wait_for_metrics("hitl_sign_ins_total")
    )


@SQLITE_ONLY
def test_metrics_show_an_open_stream_while_it_is_open_and_the_build(served: Served) -> None:
    active = 'hitl_rpc_active{method="/hitl.v1.DecisionService/WatchPending"}'
    with served.channel() as channel:
        stream = decision_pb2_grpc.DecisionServiceStub(channel).WatchPending(
            decision_pb2.WatchPendingRequest(), metadata=served.admin(), timeout=CALL_S * 4
        )
        next(stream)  # open on the server
        body = served.wait_for_metrics(f"{active} 1.0", "hitl_watchers 1.0")
        stream.cancel()
    assert f"{active} 1.0" in body
    assert "hitl_watchers 1.0" in body
    assert 'hitl_build_info{grpcio="' in body
    assert "process_resident_memory_bytes" in body
    assert f"{active} 0.0" in served.wait_for_metrics(f"{active} 0.0")
    served.assert_alive()


@SQLITE_ONLY
def test_a_node_grpc_js_client_loads_the_protos_and_signs_in(served: Served) -> None:
    username, password = served.create_user(access_pb2.ROLE_VIEWER)
    run = served.node("whoami.js", username, password)
    user = json.loads(run.wait_for_line(""))
    assert run.finish() == (0, "")
    assert (user["username"], user["role"]) == (username, "ROLE_VIEWER")


@SQLITE_ONLY
def test_the_access_log_counts_each_call_by_the_status_it_really_ended_with(
    served: Served,
) -> None:
    with served.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=CALL_S)
        login: grpc.UnaryUnaryMultiCallable[bytes, bytes]
        login = channel.unary_unary("/hitl.v1.AuthService/Login", None, None)
        with pytest.raises(grpc.RpcError) as garbage:
            login(b"\x0a\xff", timeout=CALL_S)
    assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
    assert garbage.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    expected = (
        'hitl_rpc_total{code="NOT_FOUND",method="/grpc.health.v1.Health/Check"} 1.0',
        'hitl_rpc_total{code="INVALID_ARGUMENT",method="/hitl.v1.AuthService/Login"} 1.0',
    )
    body = served.wait_for_metrics(*expected)
    assert all(sample in body for sample in expected), body


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_log_is_json_lines_and_the_access_line_keeps_the_callers_request_id(
    served: Served,
) -> None:
    with served.channel() as channel:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(),
            metadata=(("x-request-id", "candi-run-42"),),
            timeout=CALL_S,
        )
    (line,) = served.log_entries(lambda e: e.get("request_id") == "candi-run-42")
    assert line["logger"] == "hitl_grpc.rpc"
    assert line["level"] == "INFO"
    assert line["msg"] == "rpc"
    assert line["method"] == "/grpc.health.v1.Health/Check"
    assert line["code"] == "OK"
    assert line["peer"].startswith("ipv4:127.0.0.1:")
    assert {"time", "duration_ms", "principal"} <= line.keys()
    served.assert_alive()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_zero_access_log_sample_logs_failed_calls_only_and_counts_every_call(
    make_served: ServedFactory,
) -> None:
    served = make_served(HITL_ACCESS_LOG_SAMPLE="0")
    with served.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for n in range(3):
            health.Check(
                health_pb2.HealthCheckRequest(),
                metadata=(("x-request-id", f"sampled-ok-{n}"),),
                timeout=CALL_S,
            )
        with pytest.raises(grpc.RpcError) as caught:
            auth_pb2_grpc.AuthServiceStub(channel).GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(),
                metadata=(("x-request-id", "sampled-failure"),),
                timeout=CALL_S,
            )
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    (line,) = served.log_entries(lambda e: e.get("request_id") == "sampled-failure")
    assert (line["method"], line["code"]) == (
        "/hitl.v1.AuthService/GetCurrentUser",
        "UNAUTHENTICATED",
    )
    # One writer thread, lines in the order the calls ended: the OK ones would be above the
    # failure's, already written, so what is written now is the answer.
    ok_lines = served.log_entries_written(
        lambda e: str(e.get("request_id", "")).startswith("sampled-ok")
    )
    assert ok_lines == []
    sample = 'hitl_rpc_total{code="OK",method="/grpc.health.v1.Health/Check"} 3.0'
    assert sample in served.wait_for_metrics(sample)
    served.assert_alive()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_every_call_gets_its_access_line_by_default_in_call_order(served: Served) -> None:
    with served.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for n in range(20):
            health.Check(
                health_pb2.HealthCheckRequest(),
                metadata=(("x-request-id", f"each-{n:02d}"),),
                timeout=CALL_S,
            )
    lines = served.log_entries(lambda e: e.get("request_id") == "each-19")
    assert len(lines) == 1
    ids = [
        e["request_id"]
        for e in served.log_entries(lambda e: str(e.get("request_id", "")).startswith("each-"))
    ]
    assert ids == [f"each-{n:02d}" for n in range(20)]
    served.assert_alive()


def test_an_access_log_sample_out_of_range_stops_serve_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    env["HITL_DATABASE_URL"] = f"sqlite:///{tmp_path}/hitl.db"
    env["HITL_ACCESS_LOG_SAMPLE"] = "2"
    done = subprocess.run(
        SERVE, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CALL_S * 6
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "hitl-grpc: configuration error: HITL_ACCESS_LOG_SAMPLE: must be between 0 and 1, got 2"
    ]
