"""Ops with the stock grpcurl binary: discovery, the access policy, calls and clear errors."""

from __future__ import annotations

import json

import pytest

from tests.blackbox.harness import ADMIN_PASSWORD, Served

# What grpcurl shows does not depend on the store.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def test_grpcurl_lists_every_service_through_reflection(served: Served) -> None:
    done = served.grpcurl("list")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) >= {
        "hitl.v1.AuthService",
        "hitl.v1.DecisionService",
        "hitl.v1.AuditService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }


def test_grpcurl_describes_reflection_v1_itself(served: Served) -> None:
    done = served.grpcurl("describe", "grpc.reflection.v1.ServerReflection")
    assert done.returncode == 0, done.stderr
    assert "service ServerReflection {" in done.stdout
    assert ".grpc.reflection.v1.ServerReflectionRequest" in done.stdout


def test_grpcurl_describe_shows_each_methods_access_policy(served: Served) -> None:
    auth = served.grpcurl("describe", "hitl.v1.AuthService")
    decisions = served.grpcurl("describe", "hitl.v1.DecisionService")
    assert auth.returncode == decisions.returncode == 0, auth.stderr + decisions.stderr
    assert "rpc Login ( .hitl.v1.LoginRequest ) returns ( .hitl.v1.LoginResponse ) {\n" in (
        auth.stdout
    )
    assert "option (.hitl.v1.access) = { public:true };" in auth.stdout
    assert "option (.hitl.v1.access) = { roles:ROLE_ADMIN };" in auth.stdout
    make = decisions.stdout.split("rpc MakeDecision ", 1)[1].split("\n  }", 1)[0]
    assert "option (.hitl.v1.access) = { roles:ROLE_ANALYST roles:ROLE_ADMIN };" in make


def test_grpcurl_logs_in_and_calls_with_the_token(served: Served) -> None:
    login = served.grpcurl(
        "hitl.v1.AuthService/Login",
        data=json.dumps({"username": "admin", "password": ADMIN_PASSWORD}),
    )
    assert login.returncode == 0, login.stderr
    token = json.loads(login.stdout)["tokens"]["access_token"]
    me = served.grpcurl("hitl.v1.AuthService/GetCurrentUser", token=token, data="{}")
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["user"]["username"] == "admin"


def test_grpcurl_bad_requests_get_a_clear_status_and_message(served: Served) -> None:
    anonymous = served.grpcurl("hitl.v1.AuthService/GetCurrentUser", data="{}")
    bad = served.grpcurl(
        "hitl.v1.DecisionService/SubmitDecision",
        token=served.admin_token(),
        data=json.dumps({"analysis_id": "grpcurl-1", "confidence": 500}),
    )
    assert anonymous.returncode != 0
    assert "Code: Unauthenticated\n" in anonymous.stderr
    assert "Message: authentication required: send 'authorization: Bearer <token>'" in (
        anonymous.stderr
    )
    assert bad.returncode != 0
    assert "Code: InvalidArgument\n" in bad.stderr
    assert "confidence: must be between 0 and 100" in bad.stderr
    assert '"field":"confidence","description":"must be between 0 and 100"' in bad.stderr
    for out in (anonymous.stderr, bad.stderr):
        assert "Traceback" not in out and "<class" not in out
