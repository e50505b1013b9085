"""Step-up MFA: approving a high-impact action spends a fresh TOTP code of the approver's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from hitl.v1 import decision_pb2

from hitl_grpc.domain.values import Role
from tests.decisions_support import scalar, submit
from tests.harness import Harness, Metadata, ServerFactory, bearer
from tests.signin import enrolled, next_step, rpc_error, totp_code

BLOCK = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
KILL = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="dc-1 uplink")
APPROVED = decision_pb2.DECISION_STATUS_APPROVED


@pytest.fixture
async def server(make_server: ServerFactory) -> AsyncIterator[Harness]:
    """A server with the default step-up and two-person settings."""
    async with make_server() as harness:
        yield harness


async def approve(
    server: Harness,
    who: Metadata,
    analysis_id: str,
    *actions: decision_pb2.Action,
    otp: str = "",
) -> decision_pb2.Decision:
    reply = await server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=analysis_id, status=APPROVED, approved_actions=actions, otp=otp
        ),
        metadata=who,
        timeout=10,
    )
    return reply.decision


async def test_approving_a_killswitch_spends_a_fresh_code(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await enrolled(server)
    bob = await enrolled(server)
    submitted = await submit(server, service, recommended_actions=[KILL])

    first = await approve(
        server,
        bearer(ana.access_token),
        submitted.analysis_id,
        KILL,
        otp=totp_code(server, ana.secret),
    )
    assert first.status == decision_pb2.DECISION_STATUS_PENDING
    # The second approver's code travels in metadata instead of the field.
    metadata = (*bearer(bob.access_token), ("x-hitl-otp", totp_code(server, bob.secret)))
    done = await approve(server, metadata, submitted.analysis_id, KILL)
    assert done.status == APPROVED
    assert (
        await scalar(
            server,
            "SELECT count(*) FROM audit_events WHERE kind = 'decision.step_up' AND outcome = 1",
        )
        == 2
    )


async def test_a_step_up_code_is_refused_on_replay(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await enrolled(server)
    one = await submit(server, service, recommended_actions=[KILL])
    two = await submit(server, service, recommended_actions=[KILL])
    code = totp_code(server, ana.secret)
    who = bearer(ana.access_token)
    await approve(server, who, one.analysis_id, KILL, otp=code)
    err = await rpc_error(approve(server, who, two.analysis_id, KILL, otp=code))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "already used" in (err.details() or "")
    # Nothing of the refused approval was stored.
    untouched = await server.decisions.GetDecision(
        decision_pb2.GetDecisionRequest(analysis_id=two.analysis_id), metadata=who, timeout=10
    )
    assert untouched.decision.version == 1
    assert (
        await scalar(
            server,
            "SELECT count(*) FROM audit_events WHERE kind = 'decision.step_up' AND outcome = 3",
        )
        == 1
    )
    next_step(server)
    fresh = await approve(server, who, two.analysis_id, KILL, otp=totp_code(server, ana.secret))
    assert fresh.version == 2


async def test_missing_wrong_and_backup_codes_are_refused(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    ana = await enrolled(server)
    submitted = await submit(server, service, recommended_actions=[KILL])
    who = bearer(ana.access_token)
    for otp, words in (
        ("", "needs a fresh TOTP code"),
        ("000000", "wrong"),
        (ana.backup_codes[0], "wrong"),
    ):
        if otp == "000000" and totp_code(server, ana.secret) == otp:
            continue  # one chance in a million: the real code
        err = await rpc_error(approve(server, who, submitted.analysis_id, KILL, otp=otp))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED, otp
        assert words in (err.details() or "")


async def test_an_analyst_without_mfa_cannot_approve_a_killswitch(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    plain = await server.as_role(Role.ANALYST)
    submitted = await submit(server, service, recommended_actions=[BLOCK, KILL])
    err = await rpc_error(approve(server, plain, submitted.analysis_id, BLOCK, KILL, otp="123456"))
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "SetupMfa" in (err.details() or "")
    # Approving only the low-impact action, and so rejecting the killswitch, needs no code.
    done = await approve(server, plain, submitted.analysis_id, BLOCK)
    assert done.status == APPROVED
    assert list(done.resolution.approved_actions) == [BLOCK]


async def test_wrong_step_up_codes_count_towards_the_second_factor_lockout(
    make_server: ServerFactory,
) -> None:
    async with make_server(login_max_failures=3) as server:
        service = await server.as_role(Role.SERVICE)
        ana = await enrolled(server)
        submitted = await submit(server, service, recommended_actions=[KILL])
        who = bearer(ana.access_token)
        right = totp_code(server, ana.secret)
        wrong = "000000" if right != "000000" else "111111"
        for _ in range(3):
            err = await rpc_error(approve(server, who, submitted.analysis_id, KILL, otp=wrong))
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        # Locked: even the right code is refused until the lockout ends.
        err = await rpc_error(approve(server, who, submitted.analysis_id, KILL, otp=right))
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(("max_age_s", "accepted"), [(30, True), (0, False)])
async def test_a_step_up_code_must_be_of_a_step_no_older_than_the_configured_age(
    make_server: ServerFactory, max_age_s: int, accepted: bool
) -> None:
    async with make_server(step_up_max_age=timedelta(seconds=max_age_s)) as server:
        service = await server.as_role(Role.SERVICE)
        ana = await enrolled(server)
        submitted = await submit(server, service, recommended_actions=[KILL])
        next_step(server)
        code = totp_code(server, ana.secret)
        next_step(server)  # the code's step has ended: still inside TOTP's own ±1 window
        who = bearer(ana.access_token)
        if accepted:
            partial = await approve(server, who, submitted.analysis_id, KILL, otp=code)
            assert partial.version == 2
            return
        err = await rpc_error(approve(server, who, submitted.analysis_id, KILL, otp=code))
        assert err.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "wrong, expired or already used" in (err.details() or "")
        fresh = await approve(
            server, who, submitted.analysis_id, KILL, otp=totp_code(server, ana.secret)
        )
        assert fresh.version == 2
