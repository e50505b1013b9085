"""CANDI's whole workflow from a Node.js grpc-js client, decided by an analyst in Python."""

from __future__ import annotations

import uuid

from hitl.v1 import access_pb2, decision_pb2, decision_pb2_grpc

from tests.blackbox.harness import CALL_S, Served
from tests.harness import bearer


def test_candi_from_node_submits_waits_and_receives_the_analysts_verdict(
    served: Served,
) -> None:
    service_user, service_password = served.create_user(access_pb2.ROLE_SERVICE)
    analyst = bearer(served.token(access_pb2.ROLE_ANALYST))
    analysis_id = f"node-{uuid.uuid4().hex[:12]}"
    candi = served.node("candi.js", service_user, service_password, analysis_id)
    assert candi.wait_for_line("watching ") == f"{analysis_id} DECISION_STATUS_PENDING"

    with served.channel() as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        seen = stub.GetDecision(
            decision_pb2.GetDecisionRequest(analysis_id=analysis_id),
            metadata=analyst,
            timeout=CALL_S,
        ).decision
        stub.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=analysis_id,
                status=decision_pb2.DECISION_STATUS_APPROVED,
                approved_actions=[seen.recommended_actions[0]],
                notes="block it",
                expected_version=seen.version,
            ),
            metadata=analyst,
            timeout=CALL_S,
        )

    assert seen.attributed_actor == "APT-Ünïcode 熊"
    assert candi.wait_for_line("verdict ") == "DECISION_STATUS_APPROVED ACTION_TYPE_BLOCK_IP"
    assert candi.finish() == (0, "")
