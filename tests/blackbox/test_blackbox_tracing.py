"""A served process with tracing on exports its spans to a collector over OTLP/HTTP."""

from __future__ import annotations

import secrets

from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import CALL_S
from tests.harness import bearer
from tests.otlp import CLIENT, SERVER, receiving


def test_a_sync_clients_trace_reaches_the_collector_with_the_sql_under_it(
    make_served: ServedFactory,
) -> None:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    with receiving() as receiver:
        served = make_served(HITL_OTLP_ENDPOINT=receiver.url)
        token = served.token(access_pb2.ROLE_VIEWER)
        with served.channel() as channel:
            auth_pb2_grpc.AuthServiceStub(channel).GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(),
                metadata=(*bearer(token), ("traceparent", f"00-{trace_id}-{parent_id}-01")),
                timeout=CALL_S,
            )
        served.assert_alive()
        served.stop()  # a clean stop exports what is left
        call = receiver.wait_for(lambda s: s.kind == SERVER and s.trace_id == trace_id)
        assert (call.name, call.parent_span_id) == (
            "hitl.v1.AuthService/GetCurrentUser",
            parent_id,
        )
        sql = receiver.wait_for(lambda s: s.kind == CLIENT and s.parent_span_id == call.span_id)
        assert sql.trace_id == trace_id
