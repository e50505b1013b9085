"""One clock for the decisions replicas must agree on: the database's, not each replica's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hitl.v1 import decision_pb2
from sqlalchemy import select

from hitl_grpc.config import Settings
from hitl_grpc.domain.values import Priority, Role
from hitl_grpc.runtime.sweeper import Sweeper
from hitl_grpc.store.tables import audit_events
from tests.decisions_support import (
    database_now,
    statuses,
    submit,
    ts,
    wait_for_database_time,
    when,
)
from tests.harness import Harness, ServerFactory, ShiftedClock

SKEW = timedelta(seconds=20)
SLA = timedelta(seconds=3)
LEASE = timedelta(seconds=3)


def sweeper_of(server: Harness) -> Sweeper:
    """The server's background sweeper."""
    return server.running.sweeper


def _settings() -> dict[str, object]:
    # Sweeps only by hand, so the test says when each replica looks at the queue.
    return {
        "sweep_interval_s": 3600,
        "sla": {**Settings().sla, Priority.CRITICAL: SLA},
        "claim_lease": LEASE,
    }


async def _audit_time(server: Harness, kind: str, target: str) -> datetime:
    async with server.running.engine.connect() as conn:
        value = (
            await conn.execute(
                select(audit_events.c.time).where(
                    audit_events.c.kind == kind, audit_events.c.target == target
                )
            )
        ).scalar_one()
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def test_a_fast_replica_decides_on_the_database_clock(make_server: ServerFactory) -> None:
    fast_clock = ShiftedClock()
    fast_clock.advance(SKEW)
    async with (
        make_server(**_settings()) as honest,
        make_server(clock=fast_clock, **_settings()) as fast,
    ):
        service = await fast.as_role(Role.SERVICE)
        before = await database_now(fast)
        # 10 s ahead of the database, so valid; 10 s behind the fast replica's own clock.
        later = await submit(
            fast, service, priority=decision_pb2.PRIORITY_LOW, expires_at=ts(before + SKEW / 2)
        )
        soon = await submit(
            fast, service, priority=decision_pb2.PRIORITY_LOW, expires_at=ts(before + SLA)
        )
        overdue = await submit(fast, service, priority=decision_pb2.PRIORITY_CRITICAL)
        claimed = await submit(fast, service, priority=decision_pb2.PRIORITY_LOW)
        analyst = await fast.as_role(Role.ANALYST)
        lease = await fast.decisions.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=claimed.analysis_id),
            metadata=analyst,
            timeout=10,
        )
        after = await database_now(fast)

        for made in (later, soon, overdue, claimed):
            assert before <= when(made.created_at) <= after
        assert when(overdue.sla_deadline) - when(overdue.created_at) == SLA
        assert before <= when(lease.decision.updated_at) <= after
        assert when(lease.decision.claim_expires_at) - when(lease.decision.updated_at) == LEASE

        # Both replicas sweep; whatever is not yet due on the database's clock when they
        # are done must be untouched (on a slow machine some items may be due by then).
        await sweeper_of(fast).sweep_once()
        await sweeper_of(honest).sweep_once()
        checked = await database_now(fast)
        due = {
            soon.analysis_id: (when(soon.expires_at), decision_pb2.DECISION_STATUS_PENDING),
            overdue.analysis_id: (when(overdue.sla_deadline), decision_pb2.DECISION_STATUS_PENDING),
            claimed.analysis_id: (
                when(lease.decision.claim_expires_at),
                decision_pb2.DECISION_STATUS_IN_REVIEW,
            ),
            later.analysis_id: (when(later.expires_at), decision_pb2.DECISION_STATUS_PENDING),
        }
        stored = await statuses(fast, list(due))
        early = [
            i for i, (at, open_status) in due.items() if at > checked and stored[i] != open_status
        ]
        assert not early

        await wait_for_database_time(fast, max(due[i][0] for i in due if i != later.analysis_id))
        await sweeper_of(fast).sweep_once()
        assert await statuses(
            fast, [soon.analysis_id, overdue.analysis_id, claimed.analysis_id]
        ) == {
            soon.analysis_id: decision_pb2.DECISION_STATUS_EXPIRED,
            overdue.analysis_id: decision_pb2.DECISION_STATUS_ESCALATED,
            claimed.analysis_id: decision_pb2.DECISION_STATUS_PENDING,
        }
        swept = await database_now(fast)
        for kind, made, at in (
            ("decision.expire", soon, when(soon.expires_at)),
            ("decision.sla_escalate", overdue, when(overdue.sla_deadline)),
            ("decision.lease_expired", claimed, when(lease.decision.claim_expires_at)),
        ):
            recorded = await _audit_time(honest, kind, made.analysis_id)
            assert at <= recorded <= swept, kind
        # The item 10 s ahead stays open until the database's clock reaches it.
        await sweeper_of(fast).sweep_once()
        checked = await database_now(fast)
        status = (await statuses(fast, [later.analysis_id]))[later.analysis_id]
        assert status == decision_pb2.DECISION_STATUS_PENDING or when(later.expires_at) <= checked
