"""Tracing on: a server span per call, continuing the caller's trace, with its SQL under it."""

from __future__ import annotations

import secrets

import grpc
import pytest
from hitl.v1 import auth_pb2, decision_pb2

from hitl_grpc.config import ConfigError, Settings
from hitl_grpc.domain.values import Role
from tests.harness import ServerFactory
from tests.otlp import CLIENT, SERVER, ReceivedSpan, receiving


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{parent_id}-01", trace_id, parent_id


async def test_a_call_continues_the_callers_trace_and_its_sql_is_under_it(
    make_server: ServerFactory,
) -> None:
    traceparent, trace_id, parent_id = _traceparent()
    missing, missing_trace, _ = _traceparent()
    with receiving() as receiver:
        async with make_server(otlp_endpoint=receiver.url) as harness:
            metadata = (*(await harness.as_role(Role.ANALYST)), ("traceparent", traceparent))
            me = await harness.auth.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(), metadata=metadata, timeout=10
            )
            assert me.user.role
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await harness.decisions.GetDecision(
                    decision_pb2.GetDecisionRequest(analysis_id="no-such"),
                    metadata=(*metadata[:-1], ("traceparent", missing)),
                    timeout=10,
                )
            assert caught.value.code() is grpc.StatusCode.NOT_FOUND
        # Stopping the server exported what was left.

        def served(span: ReceivedSpan) -> bool:
            return span.kind == SERVER and span.trace_id == trace_id

        call = receiver.wait_for(served)
        assert call.name == "hitl.v1.AuthService/GetCurrentUser"
        assert call.parent_span_id == parent_id
        assert call.service == "hitl-grpc"
        assert call.attributes["rpc.grpc.status_code"] == 0
        assert not call.error
        sql = receiver.wait_for(lambda s: s.kind == CLIENT and s.parent_span_id == call.span_id)
        assert sql.trace_id == trace_id
        assert sql.attributes.get("db.system") in ("sqlite", "postgresql")
        refused = receiver.wait_for(lambda s: s.kind == SERVER and s.trace_id == missing_trace)
        assert refused.name == "hitl.v1.DecisionService/GetDecision"
        # NOT_FOUND is the caller's mistake, not the server's fault.
        assert refused.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
        assert not refused.error


def test_the_endpoint_must_be_an_http_url() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HITL_OTLP_ENDPOINT": "collector:4318"})
    assert caught.value.variable == "HITL_OTLP_ENDPOINT"
    settings = Settings.from_env({"HITL_OTLP_ENDPOINT": "http://127.0.0.1:4318/"})
    assert settings.otlp_endpoint == "http://127.0.0.1:4318"
