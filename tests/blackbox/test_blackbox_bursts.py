"""Bursts from many threads, each with its own channel: every call gets a real answer."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
from hitl.v1 import access_pb2, decision_pb2, decision_pb2_grpc

from tests.blackbox.harness import CALL_S, Served
from tests.harness import bearer

LOGINS = 100
DECIDERS = 50


def test_a_hundred_concurrent_logins_from_threads_all_succeed(served: Served) -> None:
    with ThreadPoolExecutor(16) as pool:
        accounts = list(
            pool.map(lambda _: served.create_user(access_pb2.ROLE_ANALYST), range(LOGINS))
        )
    start = threading.Barrier(LOGINS)

    def login(account: tuple[str, str]) -> str:
        start.wait(CALL_S)
        return served.login(*account)

    with ThreadPoolExecutor(LOGINS) as pool:
        tokens = list(pool.map(login, accounts))
    assert len(set(tokens)) == LOGINS and all(tokens)


def test_fifty_racing_deciders_have_exactly_one_winner(served: Served) -> None:
    submitted = served.submit(bearer(served.token(access_pb2.ROLE_SERVICE)))
    analysis_id = submitted.analysis_id
    with ThreadPoolExecutor(16) as pool:
        tokens = list(pool.map(lambda _: served.token(access_pb2.ROLE_ANALYST), range(DECIDERS)))
    start = threading.Barrier(DECIDERS)

    def decide(token: str) -> grpc.StatusCode:
        with served.channel() as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            request = decision_pb2.MakeDecisionRequest(
                analysis_id=analysis_id,
                status=decision_pb2.DECISION_STATUS_APPROVED,
                notes="racing",
                expected_version=submitted.version,
            )
            # Connected before the barrier, so the race is on the server, not in dialling.
            grpc.channel_ready_future(channel).result(CALL_S)
            start.wait(CALL_S)
            try:
                stub.MakeDecision(request, metadata=bearer(token), timeout=CALL_S)
            except grpc.RpcError as err:
                return err.code()
            return grpc.StatusCode.OK

    with ThreadPoolExecutor(DECIDERS) as pool:
        outcomes = Counter(pool.map(decide, tokens))
    assert outcomes[grpc.StatusCode.OK] == 1, outcomes
    losers = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}
    assert set(outcomes) - {grpc.StatusCode.OK} <= losers, outcomes
    assert sum(outcomes.values()) == DECIDERS
