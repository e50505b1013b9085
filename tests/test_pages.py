"""Pages put together from serialized decisions are the replies protobuf itself would make."""

from __future__ import annotations

import dataclasses

from hitl.v1 import decision_pb2

from hitl_grpc.api import convert, pages
from hitl_grpc.domain.values import AnalysisId, Decision
from tests.lifecycle_support import pending


def _decision(n: int, summary: str = "") -> Decision:
    """A decision of its own id, its summary `summary`."""
    decision = pending()
    analysis = dataclasses.replace(
        decision.analysis, analysis_id=AnalysisId(f"id-{n}"), forensic_summary=summary
    )
    return dataclasses.replace(decision, analysis=analysis)


def test_a_page_reply_parses_as_the_reply_protobuf_builds() -> None:
    # Sizes either side of one- and two-byte lengths, and a long token.
    decisions = [_decision(n, "x" * size) for n, size in enumerate((0, 60, 200, 20_000))]
    rendered = pages.RenderedDecisions()
    items = [rendered.render(d) for d in decisions]
    for token in ("", "t" * 300):
        built = pages.page_reply(items, token)
        expected = decision_pb2.ListPendingDecisionsResponse(
            decisions=[convert.decision_to_proto(d) for d in decisions], next_page_token=token
        )
        assert decision_pb2.ListPendingDecisionsResponse.FromString(built) == expected
        assert len(built) == expected.ByteSize()
        assert sum(pages.entry_bytes(i) for i in items) <= len(built)


def test_each_version_is_serialized_once_and_the_oldest_go_beyond_the_bound() -> None:
    first = _decision(1, "a" * 1000)
    rendered = pages.RenderedDecisions(max_bytes=3000)
    encoded = rendered.render(first)
    assert rendered.render(first) is encoded
    assert rendered.get(first.analysis_id, 1) is encoded
    assert rendered.get(first.analysis_id, 2) is None
    claimed = dataclasses.replace(first, version=2, claimed_by="ana")
    assert rendered.render(claimed) != encoded
    for n in range(2, 6):
        rendered.render(_decision(n, "b" * 1000))
    assert rendered.get(first.analysis_id, 1) is None
    assert rendered.get(AnalysisId("id-5"), 1) is not None
    assert 1 <= len(rendered) <= 3
