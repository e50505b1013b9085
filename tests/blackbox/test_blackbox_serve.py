"""The served process answers plain outside clients and exposes metrics on its own port."""

from __future__ import annotations

import json
import urllib.request

from grpc_health.v1 import health_pb2, health_pb2_grpc
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc

from tests.blackbox.harness import CALL_S, Served
from tests.harness import bearer


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


def test_metrics_on_port_zero_are_served_on_the_announced_port(served: Served) -> None:
    served.admin_token()
    with urllib.request.urlopen(f"http://{served.metrics_address}/metrics", timeout=CALL_S) as r:
        body = r.read().decode()
    assert 'hitl_rpc_total{code="OK",method="/hitl.v1.AuthService/Login"}' in body


def test_a_node_grpc_js_client_loads_the_protos_and_signs_in(served: Served) -> None:
    username, password = served.create_user(access_pb2.ROLE_VIEWER)
    done = served.node("whoami.js", username, password)
    assert done.returncode == 0, done.stderr
    user = json.loads(done.stdout)
    assert (user["username"], user["role"]) == (username, "ROLE_VIEWER")


def test_grpcurl_lists_every_service_through_reflection(served: Served) -> None:
    done = served.grpcurl("list")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) >= {
        "hitl.v1.AuthService",
        "hitl.v1.DecisionService",
        "hitl.v1.AuditService",
        "grpc.health.v1.Health",
    }
