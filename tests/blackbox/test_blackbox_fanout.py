"""Watchers in another process, with other filters and roles, decode what `serve` shares.

The server serializes each live event once for all its watchers; sync clients here read
the streams both as raw bytes and through the generated stubs.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hitl.v1 import access_pb2, decision_pb2, decision_pb2_grpc

from tests.blackbox.harness import CALL_S, Served
from tests.harness import Metadata, bearer

PENDING = "/hitl.v1.DecisionService/WatchPending"
STREAM_S = CALL_S * 4


def raw_pending(
    channel: grpc.Channel, metadata: Metadata, request: decision_pb2.WatchPendingRequest
) -> Iterator[bytes]:
    """WatchPending as the bytes the server sent."""
    call: grpc.UnaryStreamMultiCallable[decision_pb2.WatchPendingRequest, bytes]
    call = channel.unary_stream(
        PENDING, request_serializer=decision_pb2.WatchPendingRequest.SerializeToString
    )
    stream: Iterator[bytes] = call(request, metadata=metadata, timeout=STREAM_S)
    return stream


def until_live(stream: Iterator[bytes]) -> None:
    """Reads a raw snapshot, which must decode, up to its end."""
    while not decision_pb2.WatchPendingResponse.FromString(next(stream)).HasField(
        "snapshot_complete"
    ):
        pass


def test_watchers_of_other_filters_and_roles_decode_what_they_are_sent(served: Served) -> None:
    candi = bearer(served.token(access_pb2.ROLE_SERVICE))
    other_machine = bearer(served.token(access_pb2.ROLE_SERVICE))
    analyst = bearer(served.token(access_pb2.ROLE_ANALYST))
    admin = served.admin()
    channels = [served.channel() for _ in range(5)]
    try:
        everything = decision_pb2.WatchPendingRequest()
        low = decision_pb2.WatchPendingRequest(priorities=[decision_pb2.PRIORITY_LOW])
        raw = raw_pending(channels[0], analyst, everything)
        filtered = raw_pending(channels[1], analyst, low)
        typed = decision_pb2_grpc.DecisionServiceStub(channels[2]).WatchPending(
            everything, metadata=admin, timeout=STREAM_S
        )
        for stream in (raw, filtered):
            until_live(stream)
        assert next(typed).HasField("snapshot_complete")

        medium = served.submit(candi, priority=decision_pb2.PRIORITY_MEDIUM)
        lowest = served.submit(candi, priority=decision_pb2.PRIORITY_LOW)
        verdicts = [
            decision_pb2_grpc.DecisionServiceStub(channels[3]).WatchDecision(
                decision_pb2.WatchDecisionRequest(analysis_id=lowest.analysis_id),
                metadata=metadata,
                timeout=STREAM_S,
            )
            for metadata in (candi, analyst)
        ]
        hidden = decision_pb2_grpc.DecisionServiceStub(channels[4]).WatchDecision(
            decision_pb2.WatchDecisionRequest(analysis_id=lowest.analysis_id),
            metadata=other_machine,
            timeout=STREAM_S,
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(hidden)
        assert refused.value.code() is grpc.StatusCode.NOT_FOUND
        for verdict in verdicts:
            assert next(verdict).decision == lowest

        with served.channel() as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            stub.MakeDecision(
                decision_pb2.MakeDecisionRequest(
                    analysis_id=lowest.analysis_id, status=decision_pb2.DECISION_STATUS_REJECTED
                ),
                metadata=analyst,
                timeout=CALL_S,
            )
            rejected = stub.GetDecision(
                decision_pb2.GetDecisionRequest(analysis_id=lowest.analysis_id),
                metadata=analyst,
                timeout=CALL_S,
            ).decision

        sent = [next(raw) for _ in range(3)]
        replies = [decision_pb2.WatchPendingResponse.FromString(b) for b in sent]
        assert replies == [next(typed) for _ in range(3)]
        assert replies[0].added == medium and replies[1].added == lowest
        assert replies[2].removed == decision_pb2.Removed(
            analysis_id=lowest.analysis_id, final_status=decision_pb2.DECISION_STATUS_REJECTED
        )
        assert [next(filtered) for _ in range(2)] == sent[1:]
        for verdict in verdicts:
            rest = list(verdict)  # the stream ends after the verdict
            assert [r.decision for r in rest] == [rejected]
            assert rest[0].cursor == replies[2].cursor
    finally:
        for channel in channels:
            channel.close()
    served.assert_alive()
