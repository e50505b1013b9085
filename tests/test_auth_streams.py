"""Open streams live only as long as their caller's access: revocation and expiry end them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from hitl.v1 import access_pb2, auth_pb2, decision_pb2
from sqlalchemy import event

from hitl_grpc.accounts.users import UserUpdate
from hitl_grpc.config import ConfigError, Settings
from hitl_grpc.domain.values import Role, User
from tests.harness import Harness, ServerFactory, bearer
from tests.watching import next_of, submit_request

REAUTH_S = 0.2
# Generous: the bound under test is one re-check interval; the rest is a loaded CI machine.
MARGIN_S = 5.0


async def _end_of(
    stream: AsyncIterator[Any], within_s: float
) -> tuple[grpc.aio.AioRpcError, list[Any]]:
    """The error the stream ends with and what it delivered first; fails after `within_s`."""
    seen: list[Any] = []
    async with asyncio.timeout(within_s):
        try:
            async for message in stream:
                seen.append(message)
        except grpc.aio.AioRpcError as error:
            return error, seen
    raise AssertionError(f"stream ended without an error after {seen}")


async def _watching(server: Harness) -> tuple[User, str, AsyncIterator[Any]]:
    """An analyst with an open WatchPending, past its snapshot."""
    analyst = await server.create_user(Role.ANALYST)
    token = (await server.login(analyst.username)).tokens.access_token
    stream = aiter(
        server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=bearer(token))
    )
    first = await next_of(stream)
    assert first.WhichOneof("event") == "snapshot_complete"
    return analyst, token, stream


async def _ends_after(
    server: Harness, revoke: Callable[[User, str], Awaitable[object]]
) -> grpc.aio.AioRpcError:
    user, token, stream = await _watching(server)
    await revoke(user, token)
    revoked_at = time.monotonic()
    candi = await server.as_role(Role.SERVICE)
    await server.decisions.SubmitDecision(submit_request(), metadata=candi, timeout=10)
    error, _ = await _end_of(stream, REAUTH_S + MARGIN_S)
    assert time.monotonic() - revoked_at < REAUTH_S + MARGIN_S
    return error


async def test_deactivation_ends_an_open_watch(make_server: ServerFactory) -> None:
    async with make_server(stream_reauth_s=REAUTH_S) as server:

        async def deactivate(user: User, token: str) -> object:
            return await server.running.accounts.users.update(
                user.id, UserUpdate(active=False), actor="test", peer="test"
            )

        error = await _ends_after(server, deactivate)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_logout_ends_an_open_watch(make_server: ServerFactory) -> None:
    async with make_server(stream_reauth_s=REAUTH_S) as server:

        async def logout(user: User, token: str) -> object:
            return await server.auth.Logout(
                auth_pb2.LogoutRequest(), metadata=bearer(token), timeout=10
            )

        error = await _ends_after(server, logout)
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_demotion_to_viewer_ends_an_open_watch(make_server: ServerFactory) -> None:
    async with make_server(stream_reauth_s=REAUTH_S) as server:
        admin = await server.as_role(Role.ADMIN)

        async def demote(user: User, token: str) -> object:
            return await server.auth.UpdateUser(
                auth_pb2.UpdateUserRequest(
                    user_id=user.id,
                    role=access_pb2.ROLE_VIEWER,
                    update_mask=field_mask_pb2.FieldMask(paths=["role"]),
                ),
                metadata=admin,
                timeout=10,
            )

        error = await _ends_after(server, demote)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_an_admin_password_reset_ends_an_open_watch(make_server: ServerFactory) -> None:
    async with make_server(stream_reauth_s=REAUTH_S) as server:

        async def reset(user: User, token: str) -> object:
            return await server.running.accounts.users.update(
                user.id,
                UserUpdate(new_password="a-brand-new-password-77"),
                actor="test",
                peer="test",
            )

        error = await _ends_after(server, reset)
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_watch_ends_when_its_token_expires(make_server: ServerFactory) -> None:
    # Re-checks and heartbeats far apart: only the expiry timer can end the stream in time.
    async with make_server(
        access_token_ttl=timedelta(seconds=2), stream_reauth_s=60, heartbeat_s=60
    ) as server:
        analyst = await server.create_user(Role.ANALYST)
        tokens = (await server.login(analyst.username)).tokens
        expires_at = tokens.access_expires_at.ToDatetime().timestamp()
        stream = aiter(
            server.decisions.WatchPending(
                decision_pb2.WatchPendingRequest(), metadata=bearer(tokens.access_token)
            )
        )
        error, _ = await _end_of(stream, 2 + MARGIN_S)
        ended_at = time.time()
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "expired" in (error.details() or "")
        # Not before the expiry (clock granularity aside), and soon after it.
        assert expires_at - 0.1 <= ended_at < expires_at + MARGIN_S


async def test_a_deactivated_service_never_gets_its_verdict(make_server: ServerFactory) -> None:
    async with make_server(stream_reauth_s=60) as server:
        candi_user = await server.create_user(Role.SERVICE)
        candi = bearer((await server.login(candi_user.username)).tokens.access_token)
        submitted = await server.decisions.SubmitDecision(
            submit_request(), metadata=candi, timeout=10
        )
        analysis_id = submitted.decision.analysis_id
        stream = aiter(
            server.decisions.WatchDecision(
                decision_pb2.WatchDecisionRequest(analysis_id=analysis_id), metadata=candi
            )
        )
        assert (await next_of(stream)).decision.status == decision_pb2.DECISION_STATUS_PENDING
        await server.running.accounts.users.update(
            candi_user.id, UserUpdate(active=False), actor="test", peer="test"
        )
        await server.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=analysis_id, status=decision_pb2.DECISION_STATUS_APPROVED
            ),
            metadata=await server.as_role(Role.ANALYST),
            timeout=10,
        )
        error, seen = await _end_of(stream, MARGIN_S)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        assert seen == []


async def test_a_fresh_token_resumes_where_the_ended_stream_stopped(
    make_server: ServerFactory,
) -> None:
    async with make_server(stream_reauth_s=REAUTH_S) as server:
        analyst = await server.create_user(Role.ANALYST)
        token = (await server.login(analyst.username)).tokens.access_token
        stream = aiter(
            server.decisions.WatchPending(
                decision_pb2.WatchPendingRequest(), metadata=bearer(token)
            )
        )
        cursor = (await next_of(stream)).cursor
        await server.auth.Logout(auth_pb2.LogoutRequest(), metadata=bearer(token), timeout=10)
        error, seen = await _end_of(stream, REAUTH_S + MARGIN_S)
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        cursor = next((m.cursor for m in reversed(seen) if m.cursor), cursor)
        candi = await server.as_role(Role.SERVICE)
        fresh = await server.decisions.SubmitDecision(submit_request(), metadata=candi, timeout=10)
        again = bearer((await server.login(analyst.username)).tokens.access_token)
        resumed = aiter(
            server.decisions.WatchPending(
                decision_pb2.WatchPendingRequest(resume_cursor=cursor), metadata=again
            )
        )
        message = await next_of(resumed)
        while message.WhichOneof("event") == "heartbeat":
            message = await next_of(resumed)
        assert message.added.analysis_id == fresh.decision.analysis_id


SHARED_STREAMS = 20


async def _open_watches(server: Harness, token: str, count: int) -> list[AsyncIterator[Any]]:
    """`count` WatchPending streams of one token, each past its snapshot."""
    streams = [
        aiter(
            server.decisions.WatchPending(
                decision_pb2.WatchPendingRequest(), metadata=bearer(token)
            )
        )
        for _ in range(count)
    ]
    for first in await asyncio.gather(*(next_of(s) for s in streams)):
        assert first.WhichOneof("event") == "snapshot_complete"
    return streams


async def test_streams_of_one_token_share_their_rechecks(make_server: ServerFactory) -> None:
    # Four re-checks per stream fall due before the first heartbeat of every stream.
    async with make_server(stream_reauth_s=0.4, heartbeat_s=1.6) as server:
        token = await server.token(Role.ANALYST)
        hot = server.running.hot
        statements: list[str] = []

        def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        def account_reads() -> int:
            if hot is not None:
                return hot.executed["account"]
            return len([s for s in statements if "FROM users" in s])

        engine = server.running.engine.sync_engine
        event.listen(engine, "before_cursor_execute", seen)
        try:
            streams = await _open_watches(server, token, SHARED_STREAMS)
            before = account_reads()
            for heartbeat in await asyncio.gather(*(next_of(s) for s in streams)):
                assert heartbeat.WhichOneof("event") == "heartbeat"
            reads = account_reads() - before
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        # Checked apart, the streams would read the account 4 x 20 = 80 times; shared, a
        # few reads per grid step (32 seen on a loaded CI run, where streams open further
        # apart and fall into more steps).
        assert 1 <= reads <= 2 * SHARED_STREAMS, reads


async def test_deactivation_ends_every_stream_sharing_a_recheck(
    make_server: ServerFactory,
) -> None:
    async with make_server(stream_reauth_s=REAUTH_S) as server:
        analyst = await server.create_user(Role.ANALYST)
        token = (await server.login(analyst.username)).tokens.access_token
        streams = await _open_watches(server, token, SHARED_STREAMS)
        await server.running.accounts.users.update(
            analyst.id, UserUpdate(active=False), actor="test", peer="test"
        )
        deactivated_at = time.monotonic()
        ended = await asyncio.gather(*(_end_of(s, REAUTH_S + MARGIN_S) for s in streams))
        assert time.monotonic() - deactivated_at < REAUTH_S + MARGIN_S
        assert {error.code() for error, _ in ended} == {grpc.StatusCode.PERMISSION_DENIED}


def test_the_reauth_interval_is_never_longer_than_the_heartbeat() -> None:
    settings = Settings.from_env({"HITL_STREAM_REAUTH_S": "30", "HITL_HEARTBEAT_S": "10"})
    assert settings.stream_reauth_interval_s == 10
    assert Settings.from_env({}).stream_reauth_interval_s == 5
    with pytest.raises(ConfigError, match="HITL_STREAM_REAUTH_S"):
        Settings.from_env({"HITL_STREAM_REAUTH_S": "0"})


def test_peer_trust_can_be_switched_off_but_not_negative() -> None:
    assert Settings.from_env({"HITL_LOGIN_PEER_TRUST_S": "0"}).login_peer_trust == timedelta(0)
    assert Settings.from_env({}).login_peer_trust == timedelta(days=30)
    with pytest.raises(ConfigError, match="HITL_LOGIN_PEER_TRUST_S"):
        Settings.from_env({"HITL_LOGIN_PEER_TRUST_S": "-1"})
