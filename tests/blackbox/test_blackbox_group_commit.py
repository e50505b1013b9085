"""Sixty-four submitters at once on SQLite: every call answered, every decision stored once."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from hitl.v1 import access_pb2, decision_pb2_grpc

from tests.blackbox.harness import CALL_S, Served
from tests.harness import bearer
from tests.samples import sample_request, ts

SUBMITTERS = 64
EACH = 40


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sixty_four_concurrent_submitters_get_no_unavailable(
    served: Served, database_url: str
) -> None:
    metadata = bearer(served.token(access_pb2.ROLE_SERVICE))
    run = uuid.uuid4().hex[:8]
    detected = ts(datetime.now(UTC) - timedelta(minutes=1))
    start = threading.Barrier(SUBMITTERS)

    def submit_all(n: int) -> list[grpc.StatusCode]:
        codes = []
        with served.channel() as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            # Connected before the barrier, so the burst is on the server, not in dialling.
            grpc.channel_ready_future(channel).result(CALL_S)
            start.wait(CALL_S)
            for i in range(EACH):
                request = sample_request(f"gc-{run}-{n}-{i}", detected_at=detected)
                try:
                    stub.SubmitDecision(request, metadata=metadata, timeout=CALL_S)
                except grpc.RpcError as err:
                    codes.append(err.code())
                else:
                    codes.append(grpc.StatusCode.OK)
        return codes

    with ThreadPoolExecutor(SUBMITTERS) as pool:
        outcomes = Counter(
            code for codes in pool.map(submit_all, range(SUBMITTERS)) for code in codes
        )
    assert outcomes == {grpc.StatusCode.OK: SUBMITTERS * EACH}, outcomes

    path = database_url.partition(":///")[2]
    like = f"gc-{run}-%"
    with closing(sqlite3.connect(path)) as conn:
        stored = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT analysis_id) FROM decisions WHERE analysis_id LIKE ?",
            (like,),
        ).fetchone()
        events = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT analysis_id) FROM decision_events"
            " WHERE analysis_id LIKE ?",
            (like,),
        ).fetchone()
        audits = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT target) FROM audit_events"
            " WHERE kind = 'decision.submit' AND target LIKE ?",
            (like,),
        ).fetchone()
    everyone = (SUBMITTERS * EACH, SUBMITTERS * EACH)
    assert stored == everyone
    assert events == everyone
    assert audits == everyone
    served.assert_alive()
