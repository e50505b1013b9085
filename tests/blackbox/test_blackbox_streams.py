"""Streams that clients drop, cancel or finish while the server is busy never crash it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hitl.v1 import access_pb2, decision_pb2, decision_pb2_grpc

from tests.blackbox.harness import ADMIN_PASSWORD, CALL_S, Served
from tests.decisions_support import sample_request
from tests.harness import Metadata, bearer

STREAM_THREADS = 10
STREAMS_PER_THREAD = 50
MAX_SUBMITS = 150
SNAPSHOT = 200
REFLECTIONS = 50
WATCHERS = 40
TERMINAL = {
    decision_pb2.DECISION_STATUS_APPROVED,
    decision_pb2.DECISION_STATUS_REJECTED,
    decision_pb2.DECISION_STATUS_EXPIRED,
}


class Submitter:
    """Submits decisions from its own thread until stopped (or MAX_SUBMITS): load.

    UNAVAILABLE is the server shedding load, a fair answer; any other error is not.
    """

    def __init__(self, served: Served, metadata: Metadata) -> None:
        self.stop = threading.Event()
        self.acknowledged = 0
        self.shed = 0
        self.errors: list[grpc.StatusCode] = []
        self._thread = threading.Thread(target=self._run, args=(served, metadata))

    def _run(self, served: Served, metadata: Metadata) -> None:
        with served.channel() as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            while not self.stop.is_set() and self.acknowledged + self.shed < MAX_SUBMITS:
                try:
                    stub.SubmitDecision(sample_request(), metadata=metadata, timeout=CALL_S)
                except grpc.RpcError as err:
                    if err.code() is grpc.StatusCode.UNAVAILABLE:
                        self.shed += 1
                        continue
                    self.errors.append(err.code())
                    return
                self.acknowledged += 1

    def __enter__(self) -> Submitter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(CALL_S * 2)


def _assert_healthy(served: Served) -> None:
    served.assert_alive()
    with served.channel() as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=CALL_S
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert served.login("admin", ADMIN_PASSWORD)


def test_five_hundred_streams_dropped_abruptly_under_load_leave_the_server_up(
    served: Served,
) -> None:
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    analyst = bearer(served.token(access_pb2.ROLE_ANALYST))
    target = served.submit(service).analysis_id
    # A large open set keeps each new WatchPending writing its snapshot when it is dropped.
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: served.submit(service).analysis_id, range(SNAPSHOT)))

    def open_stream(channel: grpc.Channel, n: int) -> Any:
        decisions = decision_pb2_grpc.DecisionServiceStub(channel)
        kind = n % 4
        if kind == 0:
            return decisions.WatchPending(
                decision_pb2.WatchPendingRequest(), metadata=analyst, timeout=CALL_S
            )
        if kind == 1:
            return decisions.WatchDecision(
                decision_pb2.WatchDecisionRequest(analysis_id=target),
                metadata=analyst,
                timeout=CALL_S,
            )
        if kind == 2:
            return health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=CALL_S
            )
        # What grpcurl and other generic tools open: many questions on one stream.
        questions = [reflection_pb2.ServerReflectionRequest(list_services="")] * REFLECTIONS
        return reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter(questions), timeout=CALL_S
        )

    def churn(worker: int) -> int:
        first_messages = 0
        channel = served.channel()
        try:
            for n in range(worker, worker + STREAMS_PER_THREAD):
                call = open_stream(channel, n)
                way = n % 5
                if way == 0:  # cancelled before anything arrives
                    call.cancel()
                    continue
                messages: Iterator[Any] = iter(call)
                next(messages)
                first_messages += 1
                if way == 3:  # the whole connection dropped with the stream open
                    channel.close()
                    channel = served.channel()
                else:
                    call.cancel()
        finally:
            channel.close()
        return first_messages

    with Submitter(served, service) as load, ThreadPoolExecutor(STREAM_THREADS) as pool:
        read = sum(pool.map(churn, range(STREAM_THREADS)))
    total = STREAM_THREADS * STREAMS_PER_THREAD
    assert read == total - total // 5
    assert load.acknowledged > 0 and not load.errors, load.errors
    _assert_healthy(served)


def test_watch_decision_ends_on_its_verdict_under_load_for_every_watcher(served: Served) -> None:
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    analyst = bearer(served.token(access_pb2.ROLE_ANALYST))
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: served.submit(service).analysis_id, range(WATCHERS)))
    watching = threading.Barrier(WATCHERS + 1)

    def watch(n: int) -> int:
        with served.channel() as channel:
            call = decision_pb2_grpc.DecisionServiceStub(channel).WatchDecision(
                decision_pb2.WatchDecisionRequest(analysis_id=ids[n]),
                metadata=service,
                timeout=CALL_S * 2,
            )
            messages: Iterator[decision_pb2.WatchDecisionResponse] = iter(call)
            assert next(messages).decision.status == decision_pb2.DECISION_STATUS_PENDING
            watching.wait(CALL_S)
            for reply in messages:
                if reply.decision.status in TERMINAL:
                    if n % 2:  # CANDI got its verdict and hangs up at once
                        call.cancel()
                        return reply.decision.status
                    break
            # The others read on: the server ends the stream itself, with OK.
            assert list(messages) == []
            assert call.code() is grpc.StatusCode.OK
            return reply.decision.status

    def decide(analysis_id: str) -> None:
        with served.channel() as channel:
            decision_pb2_grpc.DecisionServiceStub(channel).MakeDecision(
                decision_pb2.MakeDecisionRequest(
                    analysis_id=analysis_id, status=decision_pb2.DECISION_STATUS_APPROVED
                ),
                metadata=analyst,
                timeout=CALL_S,
            )

    with Submitter(served, service), ThreadPoolExecutor(WATCHERS + 8) as pool:
        verdicts = [pool.submit(watch, n) for n in range(WATCHERS)]
        watching.wait(CALL_S)
        list(pool.map(decide, ids))
        seen = [v.result(CALL_S * 2) for v in verdicts]
    assert seen == [decision_pb2.DECISION_STATUS_APPROVED] * WATCHERS
    _assert_healthy(served)
