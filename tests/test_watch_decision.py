"""WatchDecision: the current state at once, each change, and the end after a verdict."""

from __future__ import annotations

import grpc
import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.domain.values import Role
from tests.harness import Harness
from tests.watching import next_of, submit_request


async def test_watch_decision_streams_changes_and_ends_after_a_verdict(server: Harness) -> None:
    candi = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    submitted = await server.decisions.SubmitDecision(submit_request(), metadata=candi, timeout=10)
    analysis_id = submitted.decision.analysis_id
    stream = aiter(
        server.decisions.WatchDecision(
            decision_pb2.WatchDecisionRequest(analysis_id=analysis_id), metadata=candi
        )
    )
    first = await next_of(stream)
    assert first.decision.status == decision_pb2.DECISION_STATUS_PENDING
    assert first.cursor

    await server.decisions.EscalateDecision(
        decision_pb2.EscalateDecisionRequest(analysis_id=analysis_id, reason="needs a senior"),
        metadata=analyst,
        timeout=10,
    )
    escalated = await next_of(stream)
    assert escalated.decision.status == decision_pb2.DECISION_STATUS_ESCALATED

    admin = await server.as_role(Role.ADMIN)
    await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=analysis_id,
            status=decision_pb2.DECISION_STATUS_APPROVED,
            approved_actions=list(submitted.decision.recommended_actions),
        ),
        metadata=admin,
        timeout=10,
    )
    verdict = await next_of(stream)
    assert verdict.decision.status == decision_pb2.DECISION_STATUS_APPROVED
    assert verdict.decision.resolution.status == decision_pb2.DECISION_STATUS_APPROVED
    assert verdict.decision.version > escalated.decision.version > first.decision.version
    with pytest.raises(StopAsyncIteration):
        await next_of(stream)


async def test_watching_a_decided_item_ends_after_its_state(server: Harness) -> None:
    candi = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    submitted = await server.decisions.SubmitDecision(submit_request(), metadata=candi, timeout=10)
    await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=submitted.decision.analysis_id,
            status=decision_pb2.DECISION_STATUS_REJECTED,
        ),
        metadata=analyst,
        timeout=10,
    )
    call = server.decisions.WatchDecision(
        decision_pb2.WatchDecisionRequest(analysis_id=submitted.decision.analysis_id),
        metadata=candi,
        timeout=10,
    )
    replies = [reply async for reply in call]
    assert [r.decision.status for r in replies] == [decision_pb2.DECISION_STATUS_REJECTED]
    assert await call.code() is grpc.StatusCode.OK


async def test_a_service_sees_only_decisions_it_submitted(server: Harness) -> None:
    candi = await server.as_role(Role.SERVICE)
    other = await server.as_role(Role.SERVICE)
    viewer = await server.as_role(Role.VIEWER)
    submitted = await server.decisions.SubmitDecision(submit_request(), metadata=candi, timeout=10)
    request = decision_pb2.WatchDecisionRequest(analysis_id=submitted.decision.analysis_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_of(aiter(server.decisions.WatchDecision(request, metadata=other)))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND

    seen = await next_of(aiter(server.decisions.WatchDecision(request, metadata=viewer)))
    assert seen.decision.analysis_id == submitted.decision.analysis_id


@pytest.mark.parametrize("analysis_id", ["no-such-analysis", "", "x" * 200])
async def test_unknown_or_malformed_id_is_refused(server: Harness, analysis_id: str) -> None:
    viewer = await server.as_role(Role.VIEWER)
    request = decision_pb2.WatchDecisionRequest(analysis_id=analysis_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await next_of(aiter(server.decisions.WatchDecision(request, metadata=viewer)))
    expected = (
        grpc.StatusCode.NOT_FOUND
        if analysis_id.strip() and len(analysis_id) < 129
        else (grpc.StatusCode.INVALID_ARGUMENT)
    )
    assert caught.value.code() is expected
