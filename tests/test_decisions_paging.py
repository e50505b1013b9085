"""ListPendingDecisions pages: never over the message limit, and any forged token is refused."""

from __future__ import annotations

import base64
import json

import grpc
import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.api.decisions import PAGE_MARGIN_BYTES
from hitl_grpc.config import MIN_MESSAGE_BYTES
from hitl_grpc.domain import validation as limits
from hitl_grpc.domain.queue import QueueFilter
from hitl_grpc.domain.values import Role
from tests.decisions_support import sample_request, violations
from tests.harness import Harness, Metadata

# Four bytes in UTF-8, the most a character takes: text at its limit in characters
# is also at its largest in bytes.
WIDE = "\U0001f600"


def _text(length: int, prefix: str = "") -> str:
    return prefix + WIDE * (length - len(prefix))


def _action(i: int) -> decision_pb2.Action:
    return decision_pb2.Action(
        type=decision_pb2.ACTION_TYPE_CUSTOM,
        target=_text(limits.ACTION_TARGET_MAX, f"{i}:"),
        description=_text(limits.ACTION_DESCRIPTION_MAX),
    )


def maximal_request(index: int) -> decision_pb2.SubmitDecisionRequest:
    """A submission with every field at its documented limit."""
    return sample_request(
        _text(limits.ID_MAX, f"max-{index}-"),
        incident_id=_text(limits.ID_MAX),
        threat_level=_text(limits.THREAT_LEVEL_MAX),
        source_ip=_text(limits.SOURCE_IP_MAX, "fe80::1%"),
        attributed_actor=_text(limits.ACTOR_MAX),
        iocs=[_text(limits.IOC_MAX, f"{i}:") for i in range(limits.IOCS_MAX)],
        ttps=[_text(limits.TTP_MAX, f"{i}:") for i in range(limits.TTPS_MAX)],
        recommended_actions=[_action(i) for i in range(limits.ACTIONS_MAX)],
        forensic_summary=_text(limits.SUMMARY_MAX),
    )


async def _maximal_open_decision(
    server: Harness, service: Metadata, analyst: Metadata, index: int
) -> decision_pb2.Decision:
    """The largest an open decision gets: escalated, with notes and reason at their limits."""
    submitted = await server.decisions.SubmitDecision(
        maximal_request(index), metadata=service, timeout=30
    )
    escalated = await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=submitted.decision.analysis_id,
            status=decision_pb2.DECISION_STATUS_ESCALATED,
            notes=_text(limits.NOTES_MAX),
            escalation_reason=_text(limits.REASON_MAX),
        ),
        metadata=analyst,
        timeout=30,
    )
    return escalated.decision


async def test_pages_of_maximum_size_decisions_stay_under_the_limit(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    made = [await _maximal_open_decision(server, service, analyst, i) for i in range(9)]
    limit = server.running.settings.max_message_bytes
    # One alone fits a page under the smallest limit an operator may set.
    assert all(d.ByteSize() + 8 <= MIN_MESSAGE_BYTES - PAGE_MARGIN_BYTES for d in made)
    assert sum(d.ByteSize() for d in made) > limit
    for page_size in (0, 3, 500):
        seen: list[str] = []
        pages = 0
        token = ""
        while True:
            reply = await server.decisions.ListPendingDecisions(
                decision_pb2.ListPendingDecisionsRequest(page_size=page_size, page_token=token),
                metadata=analyst,
                timeout=30,
            )
            pages += 1
            assert reply.ByteSize() <= limit - PAGE_MARGIN_BYTES
            assert reply.decisions, "every page moves on"
            seen.extend(d.analysis_id for d in reply.decisions)
            token = reply.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(d.analysis_id for d in made), page_size
        assert pages > 1


def _token(body: object) -> str:
    raw = json.dumps(body).encode() if not isinstance(body, bytes) else body
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _hostile_tokens(issued: str) -> list[str]:
    fingerprint = QueueFilter().fingerprint()
    good = {"p": 2, "c": "2026-01-01T00:00:00+00:00", "i": "an-1", "f": fingerprint}
    shaped = [
        {**good, "p": True},
        {**good, "p": 1.0},
        {**good, "p": "2"},
        {**good, "p": 99},
        {**good, "p": 10**40},
        {**good, "c": 12},
        {**good, "c": "yesterday"},
        {**good, "c": "2026-01-01T00:00:00"},
        {**good, "c": "9999-12-31T23:59:59-14:00"},
        {**good, "c": "0001-01-01T00:00:00+14:00"},
        {**good, "i": {"a": 1}},
        {**good, "i": ""},
        {**good, "i": "a\x00b"},
        {**good, "i": "x" * 129},
        {**good, "f": 1},
        {**good, "f": "0" * 12},
        {k: v for k, v in good.items() if k != "i"},
        {"p": {"p": {"p": [good]}}},
        [good],
        "a string",
        7,
        None,
    ]
    return [
        "not-a-token!",
        "ä",
        "=",
        "A",
        issued[:-3],
        issued[: len(issued) // 2],
        issued + "$",
        "A" * 100_000,
        _token(b"[" * 1500),
        _token(b'{"p":' * 300),
        _token(b"\xff\xfe\xfd"),
        *(_token(body) for body in shaped),
    ]


async def test_forged_page_tokens_are_invalid_arguments(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    for _ in range(3):
        await server.decisions.SubmitDecision(sample_request(), metadata=service, timeout=10)
    first = await server.decisions.ListPendingDecisions(
        decision_pb2.ListPendingDecisionsRequest(page_size=1), metadata=analyst, timeout=10
    )
    assert first.next_page_token
    for token in _hostile_tokens(first.next_page_token):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.decisions.ListPendingDecisions(
                decision_pb2.ListPendingDecisionsRequest(page_size=1, page_token=token),
                metadata=analyst,
                timeout=10,
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, token[:80]
        assert set(violations(err.value)) == {"page_token"}, token[:80]
    # The token it issued still works.
    second = await server.decisions.ListPendingDecisions(
        decision_pb2.ListPendingDecisionsRequest(page_size=1, page_token=first.next_page_token),
        metadata=analyst,
        timeout=10,
    )
    assert second.decisions[0].analysis_id != first.decisions[0].analysis_id
