"""Fenced leases, the two-person rule with step-up MFA, bulk verdicts and reassignment,
against `hitl-grpc serve` in its own process, from sync clients and grpcurl."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pyotp
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import CALL_S, PASSWORD, Served
from tests.harness import Metadata, bearer

BLOCK = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
KILL = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="dc-1 uplink")
APPROVED = decision_pb2.DECISION_STATUS_APPROVED


def _refusal(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    try:
        call(*args, **kwargs)  # type: ignore[operator]
    except grpc.RpcError as err:
        return err
    raise AssertionError("the call was not refused")


def test_a_verdict_under_a_lapsed_lease_is_fenced_off(make_served: ServedFactory) -> None:
    served = make_served(HITL_CLAIM_LEASE_S="1", HITL_SWEEP_INTERVAL_S="0.2")
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    ana = bearer(served.token(access_pb2.ROLE_ANALYST))
    bob = bearer(served.token(access_pb2.ROLE_ANALYST))
    submitted = served.submit(service)
    with served.channel() as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        claimed = stub.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=submitted.analysis_id),
            metadata=ana,
            timeout=CALL_S,
        )
        assert claimed.lease.epoch == 1 and claimed.lease.lease_id
        # The sweeper releases the lapsed lease: the stream shows it back in the queue.
        changes = stub.WatchDecision(
            decision_pb2.WatchDecisionRequest(analysis_id=submitted.analysis_id),
            metadata=ana,
            timeout=CALL_S,
        )
        for change in changes:
            if change.decision.status == decision_pb2.DECISION_STATUS_PENDING:
                break
        changes.cancel()
        taken = stub.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=submitted.analysis_id),
            metadata=bob,
            timeout=CALL_S,
        )
        assert taken.lease.epoch == 2
        verdict = decision_pb2.MakeDecisionRequest(
            analysis_id=submitted.analysis_id,
            status=APPROVED,
            approved_actions=[BLOCK],
            lease_epoch=claimed.lease.epoch,
        )
        err = _refusal(stub.MakeDecision, verdict, metadata=ana, timeout=CALL_S)
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "stale" in (err.details() or "")
        verdict.lease_epoch = taken.lease.epoch
        done = stub.MakeDecision(verdict, metadata=bob, timeout=CALL_S)
        assert done.decision.status == APPROVED
    served.assert_alive()


def _enrolled(served: Served) -> tuple[Metadata, pyotp.TOTP]:
    """A new analyst with MFA on, and their authenticator."""
    name, password = served.create_user(access_pb2.ROLE_ANALYST)
    token = bearer(served.login(name, password))
    with served.channel() as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        setup = auth.SetupMfa(
            auth_pb2.SetupMfaRequest(password=PASSWORD), metadata=token, timeout=CALL_S
        )
        totp = pyotp.TOTP(setup.secret)
        auth.ConfirmMfa(auth_pb2.ConfirmMfaRequest(code=totp.now()), metadata=token, timeout=CALL_S)
    return token, totp


def test_a_killswitch_takes_two_approvers_each_with_a_fresh_code(served: Served) -> None:
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    ana, ana_totp = _enrolled(served)
    bob, bob_totp = _enrolled(served)
    submitted = served.submit(service, recommended_actions=[BLOCK, KILL])
    # The confirming code spent the current step; the next step's code is fresh (the
    # server accepts one step of drift either way).
    ana_code = ana_totp.at(time.time() + 30)
    with served.channel() as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)

        def approve(
            who: Metadata, code: str, *actions: decision_pb2.Action
        ) -> decision_pb2.Decision:
            return stub.MakeDecision(
                decision_pb2.MakeDecisionRequest(
                    analysis_id=submitted.analysis_id, status=APPROVED, approved_actions=actions
                ),
                metadata=(*who, ("x-hitl-otp", code)),
                timeout=CALL_S,
            ).decision

        err = _refusal(approve, ana, "", BLOCK, KILL)
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        partial = approve(ana, ana_code, BLOCK, KILL)
        assert partial.status == decision_pb2.DECISION_STATUS_PENDING
        kill = next(v for v in partial.action_verdicts if v.type == KILL.type)
        assert (kill.required_approvals, len(kill.approved_by)) == (2, 1)
        # Ana again with an older code: a step at or before the last one spent never
        # counts again (that one person never counts twice is tested in-process).
        err = _refusal(approve, ana, ana_totp.at(time.time() - 30), KILL)
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        bob_code = bob_totp.at(time.time() + 30)
        done = approve(bob, bob_code, KILL)
        assert done.status == APPROVED
        assert [a.type for a in done.resolution.approved_actions] == [BLOCK.type, KILL.type]
        # Bob's code is spent: a replay on another decision is refused.
        other = served.submit(service, recommended_actions=[KILL])
        err = _refusal(
            stub.MakeDecision,
            decision_pb2.MakeDecisionRequest(
                analysis_id=other.analysis_id, status=APPROVED, approved_actions=[KILL]
            ),
            metadata=(*bob, ("x-hitl-otp", bob_code)),
            timeout=CALL_S,
        )
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "already used" in (err.details() or "")


def test_bulk_verdicts_and_lease_renewal_over_grpcurl(served: Served) -> None:
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    analyst = served.token(access_pb2.ROLE_ANALYST)
    fresh = served.submit(service)
    claimed = served.submit(service)

    claim = served.grpcurl(
        "hitl.v1.DecisionService/ClaimDecision",
        token=analyst,
        data=json.dumps({"analysis_id": claimed.analysis_id}),
    )
    assert claim.returncode == 0, claim.stderr
    lease = json.loads(claim.stdout)["lease"]
    renew = served.grpcurl(
        "hitl.v1.DecisionService/RenewLease",
        token=analyst,
        data=json.dumps({"analysis_id": claimed.analysis_id, "lease_epoch": lease["epoch"]}),
    )
    assert renew.returncode == 0, renew.stderr
    assert json.loads(renew.stdout)["lease"]["lease_id"] == lease["lease_id"]

    block = {"type": "ACTION_TYPE_BLOCK_IP", "target": "203.0.113.7"}
    request = {
        "items": [
            {"analysis_id": fresh.analysis_id, "approved_actions": [block]},
            {"analysis_id": "an-missing", "approved_actions": [block]},
            {"analysis_id": claimed.analysis_id, "approved_actions": [block], "lease_epoch": "99"},
        ],
        "status": "DECISION_STATUS_APPROVED",
        "notes": "one note for the batch",
    }
    reply = served.grpcurl(
        "hitl.v1.DecisionService/MakeDecisions", token=analyst, data=json.dumps(request)
    )
    assert reply.returncode == 0, reply.stderr
    results = json.loads(reply.stdout)["results"]
    assert [r["analysis_id"] for r in results] == [
        fresh.analysis_id,
        "an-missing",
        claimed.analysis_id,
    ]
    assert [r.get("code", 0) for r in results] == [0, 5, 9]  # OK, NOT_FOUND, FAILED_PRECONDITION
    assert results[0]["decision"]["resolution"]["notes"] == "one note for the batch"
    assert "stale" in results[2]["message"]

    too_many = {"items": [{"analysis_id": f"an-{i}"} for i in range(101)], "status": 3}
    refused = served.grpcurl(
        "hitl.v1.DecisionService/MakeDecisions", token=analyst, data=json.dumps(too_many)
    )
    assert refused.returncode != 0
    assert "InvalidArgument" in refused.stderr and "at most 100" in refused.stderr


def test_the_claimer_reassigns_and_the_old_epoch_is_fenced(served: Served) -> None:
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    ana = bearer(served.token(access_pb2.ROLE_ANALYST))
    bob_name, bob_password = served.create_user(access_pb2.ROLE_ANALYST)
    bob = bearer(served.login(bob_name, bob_password))
    submitted = served.submit(service)
    with served.channel() as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        claimed = stub.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=submitted.analysis_id),
            metadata=ana,
            timeout=CALL_S,
        )
        moved = stub.ReassignDecision(
            decision_pb2.ReassignDecisionRequest(
                analysis_id=submitted.analysis_id, assignee=bob_name
            ),
            metadata=ana,
            timeout=CALL_S,
        )
        assert moved.decision.claimed_by == bob_name
        assert moved.lease.epoch == claimed.lease.epoch + 1
        release = decision_pb2.ReleaseDecisionRequest(
            analysis_id=submitted.analysis_id, lease_epoch=claimed.lease.epoch
        )
        err = _refusal(stub.ReleaseDecision, release, metadata=ana, timeout=CALL_S)
        assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
        release.lease_epoch = moved.lease.epoch
        back = stub.ReleaseDecision(release, metadata=bob, timeout=CALL_S)
        assert back.decision.status == decision_pb2.DECISION_STATUS_PENDING
    trail = served.grpcurl(
        "hitl.v1.AuditService/ListAuditEvents",
        token=served.admin_token(),
        data=json.dumps({"kind": "decision.reassign"}),
    )
    assert trail.returncode == 0, trail.stderr
    [event] = json.loads(trail.stdout)["events"]
    assert event["details"]["to_claimer"] == bob_name
    assert event["details"]["from_claimer"] == claimed.decision.claimed_by


def test_an_open_watch_keeps_its_analysts_lease_past_its_first_expiry(
    make_served: ServedFactory,
) -> None:
    served = make_served(
        HITL_CLAIM_LEASE_S="2", HITL_HEARTBEAT_S="0.2", HITL_SWEEP_INTERVAL_S="0.2"
    )
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    ana = bearer(served.token(access_pb2.ROLE_ANALYST))
    submitted = served.submit(service)
    lease_s = 2.0
    with served.channel() as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        stream = stub.WatchPending(
            decision_pb2.WatchPendingRequest(renew_leases=True), metadata=ana, timeout=CALL_S
        )
        claimed = stub.ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=submitted.analysis_id),
            metadata=ana,
            timeout=CALL_S,
        )
        first_expiry = claimed.lease.expires_at.ToNanoseconds()
        # A renewal made after the first expiry (its expiry minus the lease is when it was
        # made, on the server's clock) shows the lease never lapsed while the sweeper ran.
        for reply in stream:
            if reply.HasField("removed") and reply.removed.analysis_id == submitted.analysis_id:
                raise AssertionError("the decision left the queue")
            changed = reply.updated
            if changed.analysis_id != submitted.analysis_id:
                continue
            assert changed.status == decision_pb2.DECISION_STATUS_IN_REVIEW, changed
            assert changed.lease_epoch == claimed.lease.epoch
            made_ns = changed.claim_expires_at.ToNanoseconds() - int(lease_s * 1e9)
            if made_ns > first_expiry:
                break
        stream.cancel()
    served.assert_alive()


def test_the_two_person_rule_holds_for_racing_outside_clients(make_served: ServedFactory) -> None:
    served = make_served(HITL_STEP_UP_ACTIONS="none")
    service = bearer(served.token(access_pb2.ROLE_SERVICE))
    ana = bearer(served.token(access_pb2.ROLE_ANALYST))
    racers = [bearer(served.token(access_pb2.ROLE_ANALYST)) for _ in range(2)]
    submitted = served.submit(service, recommended_actions=[KILL])
    request = decision_pb2.MakeDecisionRequest(
        analysis_id=submitted.analysis_id, status=APPROVED, approved_actions=[KILL]
    )

    def approve(who: Metadata) -> decision_pb2.Decision | grpc.RpcError:
        # One channel per thread: each racer is its own client.
        with served.channel() as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            try:
                return stub.MakeDecision(request, metadata=who, timeout=CALL_S).decision
            except grpc.RpcError as err:
                return err

    first = approve(ana)
    assert isinstance(first, decision_pb2.Decision)
    assert first.status == decision_pb2.DECISION_STATUS_PENDING
    again = approve(ana)
    assert isinstance(again, grpc.RpcError)
    assert again.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "already approved" in (again.details() or "")
    # The admin who submitted another one may not approve it.
    own = served.submit(served.admin(), recommended_actions=[KILL])
    with served.channel() as channel:
        err = _refusal(
            decision_pb2_grpc.DecisionServiceStub(channel).MakeDecision,
            decision_pb2.MakeDecisionRequest(
                analysis_id=own.analysis_id, status=APPROVED, approved_actions=[KILL]
            ),
            metadata=served.admin(),
            timeout=CALL_S,
        )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(approve, racers))
    won = [r for r in results if isinstance(r, decision_pb2.Decision)]
    lost = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(won) == 1 and len(lost) == 1, results
    assert lost[0].code() is grpc.StatusCode.FAILED_PRECONDITION
    [kill] = won[0].action_verdicts
    assert won[0].status == APPROVED
    assert len(set(kill.approved_by)) == 2 == len(kill.approved_by)
    served.assert_alive()
