"""ListPendingDecisions: queue order, filters, cursors stable under inserts, index-backed."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import pytest
from hitl.v1 import decision_pb2
from sqlalchemy import text

from hitl_grpc.domain.queue import QueueFilter, QueueKey
from hitl_grpc.domain.values import AnalysisId, Priority, Role
from hitl_grpc.store.decisions import queue_query
from tests.decisions_support import submit, violations
from tests.harness import Harness, Metadata

PRIORITIES = (
    decision_pb2.PRIORITY_CRITICAL,
    decision_pb2.PRIORITY_HIGH,
    decision_pb2.PRIORITY_MEDIUM,
    decision_pb2.PRIORITY_LOW,
)


async def _all_pages(
    server: Harness, md: Metadata, page_size: int, **filters: object
) -> list[decision_pb2.Decision]:
    seen: list[decision_pb2.Decision] = []
    token = ""
    while True:
        reply = await server.decisions.ListPendingDecisions(
            decision_pb2.ListPendingDecisionsRequest(
                page_size=page_size,
                page_token=token,
                **filters,  # type: ignore[arg-type]
            ),
            metadata=md,
            timeout=10,
        )
        assert len(reply.decisions) <= page_size
        seen.extend(reply.decisions)
        token = reply.next_page_token
        if not token:
            return seen


def _key(d: decision_pb2.Decision) -> tuple[int, int, int, str]:
    return (d.priority, d.created_at.seconds, d.created_at.nanos, d.analysis_id)


async def test_queue_is_ordered_by_priority_then_age_and_holds_only_open_items(
    server: Harness,
) -> None:
    service = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    made = []
    for i in range(12):
        made.append(await submit(server, service, priority=PRIORITIES[i % 4]))
    done = made[0]
    await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=done.analysis_id, status=decision_pb2.DECISION_STATUS_REJECTED
        ),
        metadata=analyst,
        timeout=10,
    )
    listed = await _all_pages(server, analyst, 5)
    assert [d.analysis_id for d in listed] == [
        d.analysis_id
        # Submits within one tick of the database clock (1 ms on SQLite) tie on age: id decides.
        for d in sorted(made[1:], key=_key)
    ]
    critical = await _all_pages(server, analyst, 50, priorities=[decision_pb2.PRIORITY_CRITICAL])
    assert {d.priority for d in critical} == {decision_pb2.PRIORITY_CRITICAL}
    assert len(critical) == 2  # three submitted, one rejected
    await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=made[1].analysis_id),
        metadata=analyst,
        timeout=10,
    )
    in_review = await _all_pages(
        server, analyst, 50, statuses=[decision_pb2.DECISION_STATUS_IN_REVIEW]
    )
    assert [d.analysis_id for d in in_review] == [made[1].analysis_id]


async def test_pages_neither_skip_nor_repeat_under_concurrent_inserts(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    analyst = await server.as_role(Role.ANALYST)
    before = [await submit(server, service, priority=PRIORITIES[i % 4]) for i in range(60)]
    stop = asyncio.Event()
    inserted: list[str] = []

    async def keep_inserting() -> None:
        i = 0
        while not stop.is_set():
            d = await submit(
                server, service, f"late-{uuid.uuid4().hex}", priority=PRIORITIES[i % 4]
            )
            inserted.append(d.analysis_id)
            i += 1

    writer = asyncio.create_task(keep_inserting())
    try:
        seen: list[decision_pb2.Decision] = []
        token = ""
        while True:
            reply = await server.decisions.ListPendingDecisions(
                decision_pb2.ListPendingDecisionsRequest(page_size=7, page_token=token),
                metadata=analyst,
                timeout=10,
            )
            seen.extend(reply.decisions)
            token = reply.next_page_token
            if not token:
                break
            await asyncio.sleep(0)  # let the writer run between pages
    finally:
        stop.set()
        await writer
    ids = [d.analysis_id for d in seen]
    assert len(ids) == len(set(ids)), "an item was repeated"
    assert {d.analysis_id for d in before} <= set(ids), "an item was skipped"
    assert [_key(d) for d in seen] == sorted(_key(d) for d in seen)
    assert inserted, "the writer never ran"


async def test_page_size_defaults_caps_and_bad_tokens(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    service = await server.as_role(Role.SERVICE)
    for _ in range(3):
        await submit(server, service)
    reply = await server.decisions.ListPendingDecisions(
        decision_pb2.ListPendingDecisionsRequest(page_size=2), metadata=analyst, timeout=10
    )
    assert len(reply.decisions) == 2 and reply.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.ListPendingDecisions(
            decision_pb2.ListPendingDecisionsRequest(
                page_size=-1,
                page_token="not-a-token",
                priorities=[decision_pb2.PRIORITY_UNSPECIFIED],
                statuses=[decision_pb2.DECISION_STATUS_APPROVED],
            ),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(violations(err.value)) == {"page_size", "page_token", "priorities[0]", "statuses[0]"}
    # A token is tied to the filters it was issued for.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await server.decisions.ListPendingDecisions(
            decision_pb2.ListPendingDecisionsRequest(
                page_token=reply.next_page_token, priorities=[decision_pb2.PRIORITY_LOW]
            ),
            metadata=analyst,
            timeout=10,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_page_size_is_capped_at_500(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    await _bulk_insert(server, 501)
    reply = await server.decisions.ListPendingDecisions(
        decision_pb2.ListPendingDecisionsRequest(page_size=10_000), metadata=analyst, timeout=10
    )
    assert len(reply.decisions) == 500 and reply.next_page_token
    default = await server.decisions.ListPendingDecisions(
        decision_pb2.ListPendingDecisionsRequest(), metadata=analyst, timeout=10
    )
    assert len(default.decisions) == 50


async def _bulk_insert(server: Harness, count: int) -> None:
    """Rows straight into the table: only the queue's read path is under test."""
    now = server.clock.now()
    rows = [
        {
            "analysis_id": f"bulk-{i:07d}",
            "priority": (i % 4) + 1,
            "status": (1, 1, 1, 2, 3, 4, 5, 6)[i % 8] if count > 1000 else 1,
            "created_at": now - timedelta(seconds=count - i),
            "sla": now + timedelta(hours=1),
        }
        for i in range(count)
    ]
    async with server.running.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO decisions (analysis_id, incident_id, threat_level, source_ip, "
                "attributed_actor, confidence, iocs, ttps, recommended_actions, forensic_summary, "
                "priority, detected_at, payload_hash, submitted_by, status, version, created_at, "
                "updated_at, sla_deadline, sla_breached) VALUES (:analysis_id, 'inc', 'high', "
                "'10.0.0.1', '', 50, '[]', '[]', '[]', '', :priority, :created_at, 'h', 'bulk', "
                ":status, 1, :created_at, :created_at, :sla, false)"
            ),
            rows,
        )


@pytest.mark.parametrize("with_cursor", [False, True])
async def test_queue_query_walks_the_partial_index(
    backend: str, server: Harness, with_cursor: bool
) -> None:
    await _bulk_insert(server, 20_000)
    after = None
    if with_cursor:
        after = QueueKey(Priority.HIGH, server.clock.now() - timedelta(hours=1), AnalysisId("m"))
    query = queue_query(QueueFilter(), after, 51)
    async with server.running.engine.connect() as conn:
        compiled = query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
        if backend == "postgres":
            await conn.execute(text("ANALYZE decisions"))
            explain = f"EXPLAIN {compiled}"
        else:
            await conn.execute(text("ANALYZE"))
            explain = f"EXPLAIN QUERY PLAN {compiled}"
        plan = "\n".join(str(r[-1]) for r in (await conn.execute(text(explain))).all())
    assert "ix_decisions_queue" in plan, plan
    # The index order is the query order: no sort step over the open set.
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
