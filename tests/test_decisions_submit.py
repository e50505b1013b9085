"""SubmitDecision and GetDecision: validation, idempotency, byte-exact storage, visibility."""

from __future__ import annotations

import asyncio
import unicodedata
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.domain.values import Role
from tests.decisions_support import sample_request, scalar, submit, ts, violations
from tests.harness import Harness


async def test_submit_then_get_returns_the_pending_decision(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    request = sample_request()
    reply = await server.decisions.SubmitDecision(request, metadata=service, timeout=10)
    assert reply.created
    got = await server.decisions.GetDecision(
        decision_pb2.GetDecisionRequest(analysis_id=request.analysis_id),
        metadata=await server.as_role(Role.VIEWER),
        timeout=10,
    )
    d = got.decision
    assert d.status == decision_pb2.DECISION_STATUS_PENDING
    assert d.version == 1
    assert list(d.iocs) == list(request.iocs)
    assert list(d.recommended_actions) == list(request.recommended_actions)
    assert d.detected_at == request.detected_at
    assert d.sla_deadline.ToDatetime() - d.created_at.ToDatetime() == timedelta(hours=1)
    assert not d.HasField("resolution")


async def test_same_payload_again_is_not_created_twice(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    request = sample_request()
    first = await server.decisions.SubmitDecision(request, metadata=service, timeout=10)
    again = await server.decisions.SubmitDecision(request, metadata=service, timeout=10)
    assert first.created and not again.created
    assert again.decision == first.decision


async def test_other_payload_under_the_same_id_already_exists(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    request = sample_request()
    await server.decisions.SubmitDecision(request, metadata=service, timeout=10)
    changed = sample_request(request.analysis_id, confidence=12.0)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.SubmitDecision(changed, metadata=service, timeout=10)
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS


async def test_fifty_concurrent_identical_submits_create_one_row(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    request = sample_request()
    replies = await asyncio.gather(
        *(server.decisions.SubmitDecision(request, metadata=service, timeout=30) for _ in range(50))
    )
    assert sum(r.created for r in replies) == 1
    assert {r.decision.version for r in replies} == {1}
    rows = await scalar(
        server, "SELECT count(*) FROM decisions WHERE analysis_id = :id", id=request.analysis_id
    )
    events = await scalar(
        server,
        "SELECT count(*) FROM decision_events WHERE analysis_id = :id",
        id=request.analysis_id,
    )
    audits = await scalar(
        server,
        "SELECT count(*) FROM audit_events WHERE kind = 'decision.submit' AND target = :id",
        id=request.analysis_id,
    )
    assert (rows, events, audits) == (1, 1, 1)


HOSTILE = [
    "Robert'); DROP TABLE decisions;--",
    "' OR '1'='1",
    "<script>alert('x')</script>&amp;",
    "\u202eevil\u202c \u200f\u200e mixed RTL \u05e9\u05dc\u05d5\u05dd",
    "Arabic \u0645\u0631\u062d\u0628\u0627 \u061c",
    "emoji \U0001f4a5\U0001f469\u200d\U0001f4bb and flags \U0001f1fa\U0001f1e6",
    "combining e\u0301 vs \u00e9, zero-width\u200bjoiner\ufeff",
    "tabs\tand\nnewlines\r\n and backslashes \\ \\x00 %s %n {}",
    "\U0010ffff private \ue000 plane",
]


@pytest.mark.parametrize("hostile", HOSTILE)
async def test_hostile_strings_round_trip_byte_exact(server: Harness, hostile: str) -> None:
    service = await server.as_role(Role.SERVICE)
    # Ids refuse control characters (documented); every other field takes them as sent.
    printable = "".join(ch for ch in hostile if unicodedata.category(ch) != "Cc")
    request = sample_request(
        printable[:100],
        incident_id=hostile[:128],
        threat_level=hostile[:64],
        attributed_actor=hostile,
        forensic_summary=hostile * 3,
        iocs=[hostile],
        ttps=[hostile[:64]],
        recommended_actions=[
            decision_pb2.Action(
                type=decision_pb2.ACTION_TYPE_CUSTOM, target=hostile, description=hostile
            )
        ],
    )
    await server.decisions.SubmitDecision(request, metadata=service, timeout=10)
    got = (
        await server.decisions.GetDecision(
            decision_pb2.GetDecisionRequest(analysis_id=request.analysis_id),
            metadata=service,
            timeout=10,
        )
    ).decision
    for name in ("analysis_id", "incident_id", "threat_level", "attributed_actor"):
        assert getattr(got, name).encode() == getattr(request, name).encode(), name
    assert got.forensic_summary.encode() == request.forensic_summary.encode()
    assert [s.encode() for s in got.iocs] == [s.encode() for s in request.iocs]
    assert [s.encode() for s in got.ttps] == [s.encode() for s in request.ttps]
    assert got.recommended_actions[0].description.encode() == hostile.encode()
    # The same payload again is recognised as the same, hostile bytes and all.
    again = await server.decisions.SubmitDecision(request, metadata=service, timeout=10)
    assert not again.created


async def test_nul_is_refused_on_every_backend(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    request = sample_request(attributed_actor="before\x00after", iocs=["ok", "bad\x00"])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.SubmitDecision(request, metadata=service, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"attributed_actor", "iocs[1]"}
    assert await scalar(server, "SELECT count(*) FROM decisions") == 0


async def test_every_bad_field_is_reported_at_once(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    request = decision_pb2.SubmitDecisionRequest(
        analysis_id="x" * 129,
        incident_id="",
        threat_level="t" * 65,
        source_ip="999.1.1.1",
        attributed_actor="a" * 1001,
        confidence=100.5,
        iocs=["i" * 501] + ["ok"] * 200,
        ttps=["T1"] * 21,
        recommended_actions=[decision_pb2.Action(type=decision_pb2.ACTION_TYPE_CUSTOM)]
        + [decision_pb2.Action(type=decision_pb2.ACTION_TYPE_UNSPECIFIED)]
        + [decision_pb2.Action(type=decision_pb2.ACTION_TYPE_NO_ACTION)] * 49,
        forensic_summary="s" * 10_001,
        priority=decision_pb2.PRIORITY_UNSPECIFIED,
        expires_at=ts(datetime.now(UTC) - timedelta(seconds=1)),
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.SubmitDecision(request, metadata=service, timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {
        "analysis_id",
        "incident_id",
        "threat_level",
        "source_ip",
        "attributed_actor",
        "confidence",
        "iocs",
        "iocs[0]",
        "ttps",
        "recommended_actions",
        "recommended_actions[0].description",
        "recommended_actions[1].type",
        "forensic_summary",
        "priority",
        "detected_at",
        "expires_at",
    }


async def test_documented_limits_are_accepted(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    request = sample_request(
        "y" * 128,
        source_ip="2001:db8::1",
        attributed_actor="\u00e4" * 1000,
        forensic_summary="\U0001f600" * 10_000,
        iocs=["i" * 500] * 200,
        ttps=["T" * 64] * 20,
        recommended_actions=[
            decision_pb2.Action(type=decision_pb2.ACTION_TYPE_NO_ACTION, target=str(i))
            for i in range(50)
        ],
        confidence=0.0,
    )
    reply = await server.decisions.SubmitDecision(request, metadata=service, timeout=10)
    assert reply.created
    assert len(reply.decision.forensic_summary) == 10_000
    assert len(reply.decision.recommended_actions) == 50


async def test_service_reads_only_its_own_submissions(server: Harness) -> None:
    mine = await server.as_role(Role.SERVICE)
    theirs = await server.as_role(Role.SERVICE)
    decision = await submit(server, mine)
    request = decision_pb2.GetDecisionRequest(analysis_id=decision.analysis_id)
    assert (await server.decisions.GetDecision(request, metadata=mine, timeout=10)).decision
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.GetDecision(request, metadata=theirs, timeout=10)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    # Nor can another service learn of it by resubmitting the same payload.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.SubmitDecision(
            sample_request(decision.analysis_id), metadata=theirs, timeout=10
        )
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS


async def test_unknown_id_is_not_found_and_viewer_cannot_submit(server: Harness) -> None:
    viewer = await server.as_role(Role.VIEWER)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.GetDecision(
            decision_pb2.GetDecisionRequest(analysis_id="nope"), metadata=viewer, timeout=10
        )
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.SubmitDecision(sample_request(), metadata=viewer, timeout=10)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
