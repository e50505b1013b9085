"""Queue pages from outside: threads of sync clients page while the queue changes.

Each thread has its own channel; the server folds each page's access check into the
page's own statement (PostgreSQL) and puts pages together from decisions serialized
once per version, so a walk must still see each decision once, in queue order, every
change at its latest version, and a revoked caller refused on the next page.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import field_mask_pb2
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from tests.blackbox.harness import CALL_S, Served
from tests.harness import Metadata, bearer

WALKERS = 6
QUEUED = 12


def _walk(served: Served, metadata: Metadata) -> list[decision_pb2.Decision]:
    """The whole open queue, three at a time, over a channel of this thread's own."""
    seen: list[decision_pb2.Decision] = []
    token = ""
    with served.channel() as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        while True:
            page = stub.ListPendingDecisions(
                decision_pb2.ListPendingDecisionsRequest(page_size=3, page_token=token),
                metadata=metadata,
                timeout=CALL_S,
            )
            seen += page.decisions
            token = page.next_page_token
            if not token:
                return seen


def _queue_order(d: decision_pb2.Decision) -> tuple[int, int, str]:
    return (d.priority, d.created_at.ToNanoseconds(), d.analysis_id)


def test_threads_paging_a_changing_queue_see_each_decision_once_at_its_latest(
    served: Served,
) -> None:
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    queued = {served.submit(service).analysis_id for _ in range(QUEUED)}
    analyst = bearer(served.token(access_pb2.ROLE_ANALYST))
    with ThreadPoolExecutor(WALKERS + 1) as pool:
        walks = [pool.submit(_walk, served, analyst) for _ in range(WALKERS)]
        # The queue grows while they page: a walk may or may not see these.
        late = pool.submit(lambda: {served.submit(service).analysis_id for _ in range(4)})
        results = [w.result(timeout=CALL_S * 3) for w in walks]
        added = late.result(timeout=CALL_S * 3)
    for seen in results:
        ids = [d.analysis_id for d in seen]
        assert len(ids) == len(set(ids)), "a decision was listed twice"
        assert queued <= set(ids) <= queued | added
        assert seen == sorted(seen, key=_queue_order)
    served.assert_alive()

    # A claim writes the next version: every later page shows it, whoever serves it.
    target = sorted(queued)[0]
    with served.channel() as channel:
        decision_pb2_grpc.DecisionServiceStub(channel).ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=target), metadata=analyst, timeout=CALL_S
        )
    (claimed,) = [d for d in _walk(served, analyst) if d.analysis_id == target]
    assert claimed.version == 2
    assert claimed.status == decision_pb2.DECISION_STATUS_IN_REVIEW
    assert claimed.claimed_by


def test_a_deactivated_analyst_is_refused_the_next_page(served: Served) -> None:
    name, password = served.create_user(access_pb2.ROLE_ANALYST)
    analyst = bearer(served.login(name, password))
    served.submit(bearer(served.token(access_pb2.ROLE_SERVICE)))
    assert len(_walk(served, analyst)) == 1
    assert len(_walk(served, analyst)) == 1
    with served.channel() as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        me = auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=analyst, timeout=CALL_S)
        auth.UpdateUser(
            auth_pb2.UpdateUserRequest(
                user_id=me.user.id,
                active=False,
                update_mask=field_mask_pb2.FieldMask(paths=["active"]),
            ),
            metadata=served.admin(),
            timeout=CALL_S,
        )
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListPendingDecisions(
                decision_pb2.ListPendingDecisionsRequest(), metadata=analyst, timeout=CALL_S
            )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "deactivated" in (refused.value.details() or "")
    served.assert_alive()
