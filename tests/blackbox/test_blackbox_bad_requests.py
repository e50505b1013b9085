"""Requests that are not what the contract says get a clear status from outside clients."""

from __future__ import annotations

import grpc
import pytest

from tests.blackbox.harness import CALL_S, Served
from tests.harness import Metadata

# A field-1 length prefix running past the end of the message: no protobuf parses it.
GARBAGE = b"\x0a\xff\xff\xff\x0f\x01"
# Parsing does not touch the database: one backend is enough.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


UNARY = {
    "/hitl.v1.AuthService/Login": "hitl.v1.LoginRequest",
    "/hitl.v1.DecisionService/GetDecision": "hitl.v1.GetDecisionRequest",
    "/hitl.v1.DecisionService/MakeDecision": "hitl.v1.MakeDecisionRequest",
    "/hitl.v1.DecisionService/MakeDecisions": "hitl.v1.MakeDecisionsRequest",
    "/hitl.v1.DecisionService/RenewLease": "hitl.v1.RenewLeaseRequest",
    "/hitl.v1.DecisionService/ReassignDecision": "hitl.v1.ReassignDecisionRequest",
    "/grpc.health.v1.Health/Check": "grpc.health.v1.HealthCheckRequest",
}


def _unary_error(channel: grpc.Channel, method: str, metadata: Metadata) -> grpc.RpcError:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes]
    call = channel.unary_unary(method, None, None)  # raw bytes both ways
    with pytest.raises(grpc.RpcError) as caught:
        call(GARBAGE, metadata=metadata, timeout=CALL_S)
    return caught.value


def test_unparseable_bytes_are_invalid_argument_naming_the_message(served: Served) -> None:
    with served.channel() as channel:
        errors = {m: _unary_error(channel, m, served.admin()) for m in UNARY}
        anonymous = _unary_error(channel, "/hitl.v1.DecisionService/GetDecision", ())
    assert {m: (e.code(), e.details()) for m, e in errors.items()} == {
        m: (grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {name}")
        for m, name in UNARY.items()
    }
    # Who may call comes first: a stranger learns nothing about the method.
    assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED


def test_unparseable_bytes_opening_a_server_stream_are_invalid_argument(served: Served) -> None:
    method = "/hitl.v1.DecisionService/WatchDecision"
    with served.channel() as channel:
        open_stream: grpc.UnaryStreamMultiCallable[bytes, bytes]
        open_stream = channel.unary_stream(method, None, None)
        replies = open_stream(GARBAGE, metadata=served.admin(), timeout=CALL_S)
        with pytest.raises(grpc.RpcError) as caught:
            list(replies)
    err = caught.value
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details() == "request is not a valid hitl.v1.WatchDecisionRequest"


def test_unparseable_bytes_in_a_client_stream_are_invalid_argument(served: Served) -> None:
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    with served.channel() as channel:
        open_stream: grpc.StreamStreamMultiCallable[bytes, bytes]
        open_stream = channel.stream_stream(method, None, None)
        replies = open_stream(iter([GARBAGE]), timeout=CALL_S)
        with pytest.raises(grpc.RpcError) as caught:
            list(replies)
    err = caught.value
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details() == "request is not a valid grpc.reflection.v1alpha.ServerReflectionRequest"
