"""The typed client: sign-in, refresh, retries, deadlines, errors, dashboard calls, watches."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta

import grpc
import pyotp
import pytest
from google.rpc.error_details_pb2 import BadRequest, RetryInfo
from hitl.v1 import auth_pb2, decision_pb2

from hitl_grpc import client
from hitl_grpc.client import Backoff, HitlClient, HitlClientError, PendingChange
from hitl_grpc.domain import validation
from hitl_grpc.domain.values import Action, ActionType, Role
from hitl_grpc.events import cursor as cursors
from tests.audit_support import audit_rows
from tests.decisions_support import scalar, wait_until
from tests.harness import PASSWORD, Harness, ServerFactory, ShiftedClock, bearer
from tests.tcp_proxy import ReplyEater
from tests.watching import append_events, hand_decision, hub_of, next_of, submit_request


async def _client(server: Harness, role: Role, **kwargs: object) -> HitlClient:
    user = await server.create_user(role)
    return HitlClient(server.running.address, username=user.username, password=PASSWORD, **kwargs)  # type: ignore[arg-type]


async def _until(changes: AsyncIterator[PendingChange], kind: str) -> PendingChange:
    while True:
        change = await next_of(changes)
        if change.kind == kind:
            return change


async def test_wait_for_verdict_returns_the_decided_item(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    async with await _client(server, Role.SERVICE) as candi:
        submitted = await candi.submit_decision(submit_request())
        analysis_id = submitted.decision.analysis_id
        waiting = asyncio.create_task(candi.wait_for_verdict(analysis_id, timeout_s=10))
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=analysis_id, status=decision_pb2.DECISION_STATUS_REJECTED
            ),
            metadata=analyst,
            timeout=10,
        )
        verdict = await waiting
    assert verdict.analysis_id == analysis_id
    assert verdict.status == decision_pb2.DECISION_STATUS_REJECTED


async def test_errors_that_retrying_cannot_fix_are_raised_at_once(server: Harness) -> None:
    async with await _client(server, Role.VIEWER) as viewer:
        with pytest.raises(HitlClientError) as caught:
            await viewer.get_decision("no-such-analysis")
    assert caught.value.code is grpc.StatusCode.NOT_FOUND
    wrong = HitlClient(server.running.address, username="nobody", password="wrong-password-1")
    async with wrong:
        with pytest.raises(HitlClientError) as refused:
            await wrong.login()
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


async def test_an_expired_access_token_is_refreshed(server: Harness) -> None:
    async with await _client(server, Role.SERVICE) as candi:
        submitted = await candi.submit_decision(submit_request())
        first = candi.tokens
        assert first is not None
        server.clock.advance(server.running.settings.access_token_ttl + timedelta(minutes=1))
        again = await candi.get_decision(submitted.decision.analysis_id)
        assert again.analysis_id == submitted.decision.analysis_id
        assert candi.tokens is not None
        assert candi.tokens.access_token != first.access_token


async def test_login_answers_the_mfa_challenge_through_the_hook(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    token = (await server.login(user.username)).tokens.access_token
    setup = await server.auth.SetupMfa(
        auth_pb2.SetupMfaRequest(password=PASSWORD), metadata=bearer(token), timeout=10
    )
    totp = pyotp.TOTP(setup.secret)
    await server.auth.ConfirmMfa(
        auth_pb2.ConfirmMfaRequest(code=totp.now()), metadata=bearer(token), timeout=10
    )
    asked: list[bool] = []

    async def code() -> str:
        asked.append(True)
        return setup.backup_codes[0]

    async with HitlClient(
        server.running.address, username=user.username, password=PASSWORD, mfa_code=code
    ) as analyst:
        changes = aiter(analyst.watch_pending())
        assert (await next_of(changes)).kind == "snapshot_complete"
    assert asked == [True]


async def test_watch_pending_resumes_across_a_server_restart(make_server: ServerFactory) -> None:
    async with make_server() as first:
        port = first.running.port
        user = await first.create_user(Role.ANALYST)
        client = HitlClient(first.running.address, username=user.username, password=PASSWORD)
        changes = aiter(client.watch_pending())
        assert (await next_of(changes)).kind == "snapshot_complete"
        await append_events(first, [hand_decision("before-restart")])
        change = await next_of(changes)
        assert change.decision is not None
        assert change.decision.analysis_id == "before-restart"
        # The client's next read waits on a server that is going away.
        reading = asyncio.create_task(next_of(changes, 20))
    async with make_server(listen=f"127.0.0.1:{port}") as second:
        await append_events(second, [hand_decision("while-away")])
        await append_events(second, [hand_decision("after-restart")])
        got = [await reading, await next_of(changes)]
    assert [c.kind for c in got] == ["added", "added"]
    assert [c.decision.analysis_id for c in got if c.decision] == ["while-away", "after-restart"]
    await client.close()


async def test_watch_pending_resyncs_when_its_cursor_is_gone(server: Harness) -> None:
    async with await _client(server, Role.ANALYST) as analyst:
        changes = aiter(analyst.watch_pending())
        complete = await next_of(changes)
        assert complete.kind == "snapshot_complete"
        await append_events(server, [hand_decision("seen")])
        seen = await next_of(changes)
        old = server.running.clock.now() - server.running.settings.event_retention * 2
        await append_events(server, [hand_decision("expired", now=old)])
        await hub_of(server).sync()

        async def pruned() -> bool:
            # On PostgreSQL pruning waits for the cluster-wide commit horizon.
            return await hub_of(server).prune() > 0

        await wait_until(pruned)
        resumed = aiter(analyst.watch_pending(cursor=complete.cursor))
        assert (await next_of(resumed)).kind == "resync"
        assert (await _until(resumed, "snapshot_complete")).cursor
        assert seen.kind == "added"


def _client_of_a_down_server(backoff: Backoff, timeout_s: float = 10.0) -> HitlClient:
    """A client of a port nothing listens on: every attempt fails fast with UNAVAILABLE."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    return HitlClient(
        address, username="nobody", password=PASSWORD, timeout_s=timeout_s, backoff=backoff
    )


def _position(cursor: str) -> int:
    decoded = cursors.decode(cursor)
    assert decoded is not None
    return decoded


async def test_a_lost_refresh_reply_does_not_look_like_token_reuse(server: Harness) -> None:
    user = await server.create_user(Role.SERVICE)
    async with ReplyEater(server.running.port).running() as proxy:
        client = HitlClient(
            f"127.0.0.1:{proxy.port}", username=user.username, password=PASSWORD, timeout_s=10
        )
        async with client:
            submitted = await client.submit_decision(submit_request())
            assert client.tokens is not None
            proxy.swallow_replies_after(client.tokens.refresh_token.encode())
            server.clock.advance(server.running.settings.access_token_ttl + timedelta(minutes=1))
            # The access token is now expired: the next call refreshes it, and the reply
            # to that refresh is lost after the server has committed the rotation.
            reading = asyncio.create_task(client.get_decision(submitted.decision.analysis_id))
            await asyncio.wait_for(proxy.marker_sent.wait(), 10)

            async def rotated() -> bool:
                return bool(await audit_rows(server, "auth.refresh", user.username))

            await wait_until(rotated)
            proxy.cut()
            again = await asyncio.wait_for(reading, 20)
        assert again.analysis_id == submitted.decision.analysis_id
    assert await audit_rows(server, "auth.refresh.reuse_detected", user.username) == []
    revoked = await scalar(
        server, "SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NOT NULL"
    )
    assert revoked == 0
    logins = await audit_rows(server, "auth.login", user.username)
    assert len(logins) == 2  # the first sign-in, and the one that replaced the lost rotation


async def test_client_errors_carry_field_violations_and_retry_info(server: Harness) -> None:
    async with await _client(server, Role.SERVICE) as candi:
        bad = submit_request()
        bad.confidence = 250.0
        bad.source_ip = "not-an-address"
        with pytest.raises(HitlClientError) as invalid:
            await candi.submit_decision(bad)
    assert invalid.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in invalid.value.field_violations} >= {"confidence", "source_ip"}
    assert invalid.value.retry_delay_s is None
    user = await server.create_user(Role.ANALYST)
    async with HitlClient(
        server.running.address, username=user.username, password="not-the-password-1"
    ) as wrong:
        for _ in range(50):
            with pytest.raises(HitlClientError) as refused:
                await wrong.login()
            if refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED:
                break
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.retry_delay_s is not None and refused.value.retry_delay_s > 0
    assert refused.value.field_violations == ()


async def test_watch_pending_resumes_across_a_replica_drain_without_gap_or_duplicate(
    make_server: ServerFactory,
) -> None:
    clock = ShiftedClock()
    async with make_server(clock=clock) as second, AsyncExitStack() as first_stack:
        first = await first_stack.enter_async_context(make_server(clock=clock))
        user = await second.create_user(Role.ANALYST)
        # pick_first: every watcher starts on the first replica, and moves to the second.
        address = f"ipv4:127.0.0.1:{first.running.port},127.0.0.1:{second.running.port}"
        clients = [HitlClient(address, username=user.username, password=PASSWORD) for _ in range(8)]
        streams = [aiter(c.watch_pending()) for c in clients]
        for stream in streams:
            assert (await next_of(stream, 20)).kind == "snapshot_complete"
        assert hub_of(first).watchers == len(clients)
        expected: list[str] = []
        received: list[list[PendingChange]] = [[] for _ in streams]

        async def append(tag: str) -> None:
            batch = [hand_decision(f"{tag}-{i}") for i in range(3)]
            await append_events(second, batch)
            expected.extend(d.analysis_id for d in batch)

        async def catch_up() -> None:
            for stream, got in zip(streams, received, strict=True):
                while len(got) < len(expected):
                    got.append(await next_of(stream, 30))

        await append("before")
        await catch_up()
        # A long-lived watch outlives its access token: it reconnects with an expired one.
        clock.advance(first.running.settings.access_token_ttl + timedelta(minutes=1))
        draining = asyncio.create_task(first_stack.aclose())
        await append("during")
        await draining
        await append("after")
        await catch_up()
        for got in received:
            assert [c.kind for c in got] == ["added"] * len(expected)
            assert [c.decision.analysis_id for c in got if c.decision] == expected
            positions = [_position(c.cursor) for c in got]
            assert positions == sorted(set(positions))
        assert hub_of(second).watchers == len(clients)
        for client in clients:
            await client.close()


async def test_a_watch_gives_up_once_its_retry_budget_is_spent() -> None:
    client = _client_of_a_down_server(Backoff(first_s=0.01, max_s=0.05, budget_s=0.5))
    async with client:
        with pytest.raises(HitlClientError) as gave_up:
            await next_of(aiter(client.watch_pending()), 20)
    assert gave_up.value.code is grpc.StatusCode.UNAVAILABLE


async def test_list_pending_pages_through_the_open_queue_most_urgent_first(
    server: Harness,
) -> None:
    async with await _client(server, Role.SERVICE) as candi:
        low = await candi.submit_decision(submit_request(priority=decision_pb2.PRIORITY_LOW))
        critical = [
            await candi.submit_decision(submit_request(priority=decision_pb2.PRIORITY_CRITICAL))
            for _ in range(2)
        ]
    async with await _client(server, Role.ANALYST) as analyst:
        first = await analyst.list_pending_page(page_size=2)
        assert len(first.decisions) == 2
        assert first.next_page_token
        rest = await analyst.list_pending_page(page_size=2, page_token=first.next_page_token)
        every = [d.analysis_id async for d in analyst.list_pending(page_size=1)]
        only_critical = [
            d.analysis_id async for d in analyst.list_pending([decision_pb2.PRIORITY_CRITICAL])
        ]
    ids = [d.analysis_id for d in (*first.decisions, *rest.decisions)]
    assert ids[-1] == low.decision.analysis_id
    assert set(ids[:2]) == {c.decision.analysis_id for c in critical}
    assert every == ids
    assert sorted(only_critical) == sorted(c.decision.analysis_id for c in critical)


async def test_an_analyst_claims_releases_and_approves_through_the_client(
    server: Harness,
) -> None:
    async with await _client(server, Role.SERVICE) as candi:
        submitted = (await candi.submit_decision(submit_request())).decision
    action = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
    async with await _client(server, Role.ANALYST) as analyst:
        claimed = await analyst.claim_decision(
            submitted.analysis_id, expected_version=submitted.version
        )
        assert claimed.status == decision_pb2.DECISION_STATUS_IN_REVIEW
        assert claimed.claimed_by
        released = await analyst.release_decision(submitted.analysis_id)
        assert released.status == decision_pb2.DECISION_STATUS_PENDING
        with pytest.raises(HitlClientError) as stale:
            await analyst.claim_decision(submitted.analysis_id, expected_version=claimed.version)
        assert stale.value.code is grpc.StatusCode.ABORTED
        approved = await analyst.approve(
            submitted.analysis_id, [action], notes="blocked at the edge"
        )
    assert approved.status == decision_pb2.DECISION_STATUS_APPROVED
    assert list(approved.resolution.approved_actions) == [action]
    assert approved.resolution.notes == "blocked at the edge"
    assert approved.version > released.version > claimed.version


async def test_a_lease_is_claimed_renewed_and_fences_verdicts_through_the_client(
    server: Harness,
) -> None:
    async with await _client(server, Role.SERVICE) as candi:
        submitted = (await candi.submit_decision(submit_request())).decision
    action = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
    async with await _client(server, Role.ANALYST) as analyst:
        claimed = await analyst.claim_lease(submitted.analysis_id)
        assert claimed.lease.epoch == 1
        renewed = await analyst.renew_lease(submitted.analysis_id, claimed.lease.epoch)
        assert renewed.lease.lease_id == claimed.lease.lease_id
        with pytest.raises(HitlClientError) as stale:
            await analyst.make_decision(
                submitted.analysis_id,
                decision_pb2.DECISION_STATUS_APPROVED,
                approved_actions=[action],
                lease_epoch=claimed.lease.epoch + 1,
            )
        assert stale.value.code is grpc.StatusCode.FAILED_PRECONDITION
        done = await analyst.make_decision(
            submitted.analysis_id,
            decision_pb2.DECISION_STATUS_APPROVED,
            approved_actions=[action],
            lease_epoch=claimed.lease.epoch,
            expected_version=renewed.decision.version,
        )
    assert done.status == decision_pb2.DECISION_STATUS_APPROVED


async def test_candi_runs_exactly_the_approved_actions_whose_hash_matches(
    server: Harness,
) -> None:
    block = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
    odd = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_QUARANTINE_SYSTEM, target='höst-熊 "7"')
    request = submit_request()
    del request.recommended_actions[:]
    request.recommended_actions.extend([block, odd])
    async with await _client(server, Role.SERVICE) as candi:
        submitted = (await candi.submit_decision(request)).decision
    assert [v.action_hash for v in submitted.action_verdicts] == [
        validation.action_hash(Action(ActionType(a.type), a.target)) for a in (block, odd)
    ]
    assert [client.action_hash(a) for a in (block, odd)] == [
        v.action_hash for v in submitted.action_verdicts
    ]
    async with await _client(server, Role.ANALYST) as analyst:
        results = await analyst.make_decisions(
            [
                decision_pb2.MakeDecisionsItem(
                    analysis_id=submitted.analysis_id, approved_actions=[odd]
                )
            ],
            decision_pb2.DECISION_STATUS_APPROVED,
            notes="only the quarantine",
        )
    [result] = results
    assert result.code == 0
    assert client.executable_actions(result.decision) == [odd]
    tampered = decision_pb2.Decision()
    tampered.CopyFrom(result.decision)
    tampered.recommended_actions[1].target = "another-host"
    with pytest.raises(ValueError, match="does not match"):
        client.executable_actions(tampered)
    assert client.executable_actions(submitted) == []


async def test_rejecting_escalating_and_stats_through_the_client(server: Harness) -> None:
    async with await _client(server, Role.SERVICE) as candi:
        first, second, third = [
            (await candi.submit_decision(submit_request())).decision for _ in range(3)
        ]
    async with await _client(server, Role.ANALYST) as analyst:
        rejected = await analyst.reject(first.analysis_id, notes="benign scanner")
        escalated = await analyst.escalate_decision(second.analysis_id, "needs attribution")
        with pytest.raises(HitlClientError) as no_reason:
            await analyst.make_decision(third.analysis_id, decision_pb2.DECISION_STATUS_ESCALATED)
        made = await analyst.make_decision(
            third.analysis_id,
            decision_pb2.DECISION_STATUS_ESCALATED,
            escalation_reason="second opinion",
        )
        stats = await analyst.decision_stats()
    assert rejected.status == decision_pb2.DECISION_STATUS_REJECTED
    assert rejected.resolution.notes == "benign scanner"
    assert escalated.status == decision_pb2.DECISION_STATUS_ESCALATED
    assert escalated.resolution.escalation_reason == "needs attribution"
    assert no_reason.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert no_reason.value.field_violations
    assert made.resolution.escalation_reason == "second opinion"
    assert stats.escalated == 2
    assert stats.last_24h.submitted == 3
    assert stats.last_24h.rejected == 1


async def test_client_errors_keep_the_status_and_every_detail_unpacked(server: Harness) -> None:
    async with await _client(server, Role.SERVICE) as candi:
        bad = submit_request()
        bad.confidence = 250.0
        with pytest.raises(HitlClientError) as invalid:
            await candi.submit_decision(bad)
    error = invalid.value
    assert error.status is not None
    assert error.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert error.status.message == error.message
    bad_request = error.detail(BadRequest)
    assert bad_request is not None
    assert bad_request in error.details
    assert [v.field for v in bad_request.field_violations] == ["confidence"]
    assert error.detail(RetryInfo) is None


async def test_one_deadline_bounds_all_the_attempts_of_a_call() -> None:
    # Backoff far longer than the deadline: the retries must stop at the deadline, not
    # after each attempt's own timeout and pause.
    client = _client_of_a_down_server(Backoff(first_s=30, max_s=60, attempts=5), timeout_s=0.5)
    async with client, asyncio.timeout(10):
        with pytest.raises(HitlClientError) as late:
            await client.get_decision("an-1")
    assert late.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_server_that_is_down_is_unavailable_once_the_attempts_are_spent() -> None:
    client = _client_of_a_down_server(Backoff(first_s=0.01, max_s=0.02, attempts=3), timeout_s=20)
    async with client, asyncio.timeout(10):
        with pytest.raises(HitlClientError) as down:
            await client.login()
    assert down.value.code is grpc.StatusCode.UNAVAILABLE
    assert down.value.status is None


def test_the_retry_policy_never_covers_refresh_or_transitions() -> None:
    config = json.loads(Backoff(first_s=0.2, max_s=2, attempts=4).service_config())
    [method_config] = config["methodConfig"]
    retried = {entry["method"] for entry in method_config["name"]}
    assert retried == {
        "Login",
        "SubmitDecision",
        "GetDecision",
        "ListPendingDecisions",
        "GetDecisionStats",
    }
    assert method_config["retryPolicy"]["maxAttempts"] == 4
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert json.loads(Backoff(attempts=1).service_config()) == {}


@pytest.mark.parametrize(
    "fields", [{"attempts": 0}, {"attempts": 6}, {"first_s": 0}, {"first_s": 2, "max_s": 1}]
)
def test_a_backoff_grpc_cannot_apply_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"attempts|first_s"):
        Backoff(**fields)  # type: ignore[arg-type]
