"""MakeDecisions: one verdict and note for many items, each its own compare-and-set."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.domain.values import Role
from tests.decisions_support import submit
from tests.harness import Harness, Metadata, ServerFactory
from tests.signin import rpc_error

BLOCK = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
KILL = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="dc-1 uplink")
OK = grpc.StatusCode.OK.value[0]


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[Harness]:
    """A server with default settings."""
    async with make_server() as harness:
        yield harness


def item(
    analysis_id: str, *actions: decision_pb2.Action, **fences: int
) -> decision_pb2.MakeDecisionsItem:
    return decision_pb2.MakeDecisionsItem(
        analysis_id=analysis_id, approved_actions=actions, **fences
    )


async def bulk(
    server: Harness,
    who: Metadata,
    items: list[decision_pb2.MakeDecisionsItem],
    status: decision_pb2.DecisionStatus.ValueType = decision_pb2.DECISION_STATUS_APPROVED,
) -> list[decision_pb2.MakeDecisionsResult]:
    reply = await server.decisions.MakeDecisions(
        decision_pb2.MakeDecisionsRequest(items=items, status=status, notes="batch: known scanner"),
        metadata=who,
        timeout=30,
    )
    return list(reply.results)


async def test_mixed_outcomes_come_back_one_per_item_in_order(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    bob = await server.as_role(Role.ANALYST)
    fresh = await submit(server, service)
    stale = await submit(server, service)
    decided = await submit(server, service)
    claimed = await submit(server, service)
    await bulk(server, ana, [item(decided.analysis_id, BLOCK)])
    await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=claimed.analysis_id), metadata=bob, timeout=10
    )
    results = await bulk(
        server,
        ana,
        [
            item(fresh.analysis_id, BLOCK),
            item(stale.analysis_id, BLOCK, expected_version=stale.version + 5),
            item(decided.analysis_id, BLOCK),
            item("an-no-such-decision"),
            item(claimed.analysis_id, BLOCK),
            item("bad\x00id"),
            item(fresh.analysis_id, BLOCK),  # the same item twice: the second finds it decided
        ],
    )
    codes = [(r.analysis_id, grpc.StatusCode(_code(r.code))) for r in results]
    assert codes == [
        (fresh.analysis_id, grpc.StatusCode.OK),
        (stale.analysis_id, grpc.StatusCode.ABORTED),
        (decided.analysis_id, grpc.StatusCode.FAILED_PRECONDITION),
        ("an-no-such-decision", grpc.StatusCode.NOT_FOUND),
        (claimed.analysis_id, grpc.StatusCode.FAILED_PRECONDITION),
        ("bad\x00id", grpc.StatusCode.INVALID_ARGUMENT),
        (fresh.analysis_id, grpc.StatusCode.FAILED_PRECONDITION),
    ]
    ok = results[0]
    assert ok.message == "" and ok.decision.status == decision_pb2.DECISION_STATUS_APPROVED
    assert ok.decision.resolution.notes == "batch: known scanner"
    assert list(ok.decision.resolution.approved_actions) == [BLOCK]
    assert all(r.message and not r.HasField("decision") for r in results[1:])
    assert "already APPROVED" in results[2].message


def _code(number: int) -> tuple[int, str]:
    return next(c.value for c in grpc.StatusCode if c.value[0] == number)


async def test_a_bulk_rejection_rejects_every_item(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    ids = [(await submit(server, service)).analysis_id for _ in range(5)]
    results = await bulk(
        server, ana, [item(i) for i in ids], status=decision_pb2.DECISION_STATUS_REJECTED
    )
    assert [r.code for r in results] == [OK] * 5
    assert {r.decision.status for r in results} == {decision_pb2.DECISION_STATUS_REJECTED}


async def test_more_than_a_hundred_items_or_none_is_invalid(server: Harness) -> None:
    ana = await server.as_role(Role.ANALYST)
    for items in ([item(f"an-{i}") for i in range(101)], []):
        err = await rpc_error(bulk(server, ana, items))
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "items" in (err.details() or "")
    results = await bulk(server, ana, [item(f"an-{i}") for i in range(100)])
    assert len(results) == 100
    assert {r.code for r in results} == {grpc.StatusCode.NOT_FOUND.value[0]}


async def test_a_bulk_approval_of_a_killswitch_needs_the_step_up_code(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    one = await submit(server, service, recommended_actions=[KILL])
    err = await rpc_error(bulk(server, ana, [item(one.analysis_id, KILL)]))
    # The whole call is refused: an analyst without MFA can't approve a killswitch.
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
