"""Fenced review leases: every claim draws a new epoch, and a verdict naming a stale one is
refused however late it arrives.

Leases are seconds long and time passes for real: each test waits (with a deadline) for
the database's clock to pass a lease, then sweeps by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from hitl.v1 import audit_pb2, decision_pb2

from hitl_grpc.domain.values import Role
from tests.decisions_support import scalar, submit, wait_for_database_time, when
from tests.harness import Harness, Metadata, ServerFactory
from tests.signin import rpc_error
from tests.watching import next_of, watch_live

LEASE = timedelta(seconds=2)
BLOCK = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[Harness]:
    """A server with short leases whose sweeper waits: the tests sweep by hand."""
    async with make_server(sweep_interval_s=3600, claim_lease=LEASE) as harness:
        yield harness


async def _claim(
    server: Harness, who: Metadata, analysis_id: str
) -> decision_pb2.ClaimDecisionResponse:
    return await server.decisions.ClaimDecision(
        decision_pb2.ClaimDecisionRequest(analysis_id=analysis_id), metadata=who, timeout=10
    )


async def _approve(
    server: Harness, who: Metadata, analysis_id: str, epoch: int | None
) -> decision_pb2.Decision:
    request = decision_pb2.MakeDecisionRequest(
        analysis_id=analysis_id,
        status=decision_pb2.DECISION_STATUS_APPROVED,
        approved_actions=[BLOCK],
    )
    if epoch is not None:
        request.lease_epoch = epoch
    return (await server.decisions.MakeDecision(request, metadata=who, timeout=10)).decision


async def test_a_claim_returns_a_lease_that_the_holder_renews_in_place(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    submitted = await submit(server, service)
    assert submitted.lease_epoch == 0

    first = await _claim(server, ana, submitted.analysis_id)
    assert first.lease.epoch == 1 == first.decision.lease_epoch
    assert first.lease.lease_id
    assert first.lease.expires_at == first.decision.claim_expires_at

    again = await _claim(server, ana, submitted.analysis_id)
    assert (again.lease.lease_id, again.lease.epoch) == (first.lease.lease_id, 1)
    assert when(again.lease.expires_at) >= when(first.lease.expires_at)

    renewed = await server.decisions.RenewLease(
        decision_pb2.RenewLeaseRequest(analysis_id=submitted.analysis_id, lease_epoch=1),
        metadata=ana,
        timeout=10,
    )
    assert (renewed.lease.lease_id, renewed.lease.epoch) == (first.lease.lease_id, 1)
    assert when(renewed.lease.expires_at) >= when(again.lease.expires_at)
    assert renewed.decision.version == again.decision.version + 1
    assert (
        await scalar(
            server, "SELECT count(*) FROM audit_events WHERE kind = 'decision.lease_renew'"
        )
        == 1
    )


async def test_only_the_holder_renews_and_a_wrong_epoch_is_refused(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    bob = await server.as_role(Role.ANALYST)
    submitted = await submit(server, service)
    await _claim(server, ana, submitted.analysis_id)
    for who, epoch in ((bob, 1), (ana, 7)):
        err = await rpc_error(
            server.decisions.RenewLease(
                decision_pb2.RenewLeaseRequest(
                    analysis_id=submitted.analysis_id, lease_epoch=epoch
                ),
                metadata=who,
                timeout=10,
            )
        )
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION, err
    assert "held by" in (err.details() or "") or "stale" in (err.details() or "")


async def test_a_lease_lapsing_between_read_and_verdict_fences_the_verdict(
    server: Harness,
) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    bob = await server.as_role(Role.ANALYST)
    admin = await server.as_role(Role.ADMIN)
    stream = await watch_live(server, admin)
    submitted = await submit(server, service)
    assert (await next_of(stream)).HasField("added")

    claimed = await _claim(server, ana, submitted.analysis_id)
    assert (await next_of(stream)).updated.status == decision_pb2.DECISION_STATUS_IN_REVIEW
    # Ana reads the decision, then is slow: her lease runs out before her verdict.
    read = await server.decisions.GetDecision(
        decision_pb2.GetDecisionRequest(analysis_id=submitted.analysis_id), metadata=ana, timeout=10
    )
    assert read.decision.claimed_by
    await wait_for_database_time(server, when(claimed.lease.expires_at))

    # Lapsed but not swept yet: her epoch is already no good.
    err = await rpc_error(_approve(server, ana, submitted.analysis_id, claimed.lease.epoch))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "lapsed" in (err.details() or "")

    report = await server.running.sweeper.sweep_once()
    assert report.released == 1
    # The lapse is streamed (back to PENDING, unclaimed) and audited.
    lapsed = (await next_of(stream)).updated
    assert lapsed.status == decision_pb2.DECISION_STATUS_PENDING
    assert lapsed.claimed_by == ""
    trail = await server.audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(kind="decision.lease_expired"), metadata=admin, timeout=10
    )
    assert [e.target for e in trail.events] == [submitted.analysis_id]

    taken = await _claim(server, bob, submitted.analysis_id)
    assert taken.lease.epoch == claimed.lease.epoch + 1
    assert taken.lease.lease_id != claimed.lease.lease_id

    err = await rpc_error(_approve(server, ana, submitted.analysis_id, claimed.lease.epoch))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "stale" in (err.details() or "")
    assert f"at lease epoch {taken.lease.epoch}" in (err.details() or "")

    done = await _approve(server, bob, submitted.analysis_id, taken.lease.epoch)
    assert done.status == decision_pb2.DECISION_STATUS_APPROVED
    assert done.resolution.decided_by == taken.decision.claimed_by


async def test_a_verdict_without_an_epoch_works_as_before(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    bob = await server.as_role(Role.ANALYST)
    submitted = await submit(server, service)
    await _claim(server, ana, submitted.analysis_id)
    # Not the claimer: refused as always, fenced or not.
    err = await rpc_error(_approve(server, bob, submitted.analysis_id, None))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    done = await _approve(server, ana, submitted.analysis_id, None)
    assert done.status == decision_pb2.DECISION_STATUS_APPROVED


async def test_release_and_escalate_honour_the_fence(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    submitted = await submit(server, service)
    claimed = await _claim(server, ana, submitted.analysis_id)
    stale = claimed.lease.epoch + 1
    err = await rpc_error(
        server.decisions.ReleaseDecision(
            decision_pb2.ReleaseDecisionRequest(
                analysis_id=submitted.analysis_id, lease_epoch=stale
            ),
            metadata=ana,
            timeout=10,
        )
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    err = await rpc_error(
        server.decisions.EscalateDecision(
            decision_pb2.EscalateDecisionRequest(
                analysis_id=submitted.analysis_id, reason="needs a senior", lease_epoch=stale
            ),
            metadata=ana,
            timeout=10,
        )
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    released = await server.decisions.ReleaseDecision(
        decision_pb2.ReleaseDecisionRequest(
            analysis_id=submitted.analysis_id, lease_epoch=claimed.lease.epoch
        ),
        metadata=ana,
        timeout=10,
    )
    assert released.decision.status == decision_pb2.DECISION_STATUS_PENDING
    # The epoch outlives the lease: the next claim is fenced past it.
    assert released.decision.lease_epoch == claimed.lease.epoch
    assert (await _claim(server, ana, submitted.analysis_id)).lease.epoch == claimed.lease.epoch + 1


async def test_a_lapsed_lease_cannot_be_renewed(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await server.as_role(Role.ANALYST)
    submitted = await submit(server, service)
    claimed = await _claim(server, ana, submitted.analysis_id)
    await wait_for_database_time(server, when(claimed.lease.expires_at))
    err = await rpc_error(
        server.decisions.RenewLease(
            decision_pb2.RenewLeaseRequest(
                analysis_id=submitted.analysis_id, lease_epoch=claimed.lease.epoch
            ),
            metadata=ana,
            timeout=10,
        )
    )
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "claim it again" in (err.details() or "")


async def test_an_open_watch_that_asks_for_it_keeps_the_watchers_lease_alive(
    make_server: ServerFactory,
) -> None:
    lease = timedelta(seconds=4)
    async with make_server(sweep_interval_s=3600, claim_lease=lease, heartbeat_s=0.2) as server:
        service = await server.as_role(Role.SERVICE)
        ana = await server.as_role(Role.ANALYST)
        bob = await server.as_role(Role.ANALYST)
        kept = await submit(server, service)
        left = await submit(server, service)
        stream = aiter(
            server.decisions.WatchPending(
                decision_pb2.WatchPendingRequest(renew_leases=True), metadata=ana
            )
        )
        while not (await next_of(stream)).HasField("snapshot_complete"):
            pass
        claimed = await _claim(server, ana, kept.analysis_id)
        # Bob claims too but watches nothing: his lease runs out.
        bobs = await _claim(server, bob, left.analysis_id)
        # Wait, on the stream, for the renewal of Ana's lease: same epoch, later expiry.
        while True:
            reply = await next_of(stream)
            if (
                reply.HasField("updated")
                and reply.updated.analysis_id == kept.analysis_id
                and reply.updated.version > claimed.decision.version
            ):
                renewed = reply.updated
                break
        assert renewed.lease_epoch == claimed.lease.epoch
        assert renewed.claimed_by == claimed.decision.claimed_by
        assert when(renewed.claim_expires_at) > when(claimed.lease.expires_at)
        # Bob claimed after Ana: once his lease is past, so is her original one.
        await wait_for_database_time(server, when(bobs.lease.expires_at))
        assert when(bobs.lease.expires_at) >= when(claimed.lease.expires_at)
        report = await server.running.sweeper.sweep_once()
        assert report.released == 1  # Bob's only
        now = await server.decisions.GetDecision(
            decision_pb2.GetDecisionRequest(analysis_id=kept.analysis_id), metadata=ana, timeout=10
        )
        assert now.decision.status == decision_pb2.DECISION_STATUS_IN_REVIEW
        assert (
            await scalar(
                server,
                "SELECT count(*) FROM audit_events WHERE kind = 'decision.lease_renew'",
            )
            >= 1
        )
