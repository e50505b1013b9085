"""The typed client: sign-in, refresh, retries, resumable watches and wait_for_verdict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pyotp
import pytest
from hitl.v1 import auth_pb2, decision_pb2

from hitl_grpc.client import HitlClient, HitlClientError, PendingChange
from hitl_grpc.domain.values import Role
from tests.decisions_support import wait_until
from tests.harness import PASSWORD, Harness, ServerFactory, bearer
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
