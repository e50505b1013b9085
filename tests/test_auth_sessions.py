"""Sessions: typed tokens, rotating refresh tokens with reuse detection, immediate revocation."""

from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from hitl.v1 import auth_pb2, decision_pb2
from sqlalchemy import event

from hitl_grpc.domain.values import Role
from tests.harness import PASSWORD, Harness, ServerFactory, bearer
from tests.signin import rpc_error, whoami


async def _refresh(server: Harness, refresh_token: str) -> auth_pb2.TokenPair:
    reply = await server.auth.RefreshToken(
        auth_pb2.RefreshTokenRequest(refresh_token=refresh_token), timeout=10
    )
    return reply.tokens


async def _update(server: Harness, admin: str, user_id: str, **fields: Any) -> auth_pb2.User:
    request = auth_pb2.UpdateUserRequest(
        user_id=user_id, update_mask=field_mask_pb2.FieldMask(paths=list(fields)), **fields
    )
    reply = await server.auth.UpdateUser(request, metadata=bearer(admin), timeout=10)
    return reply.user


async def test_refresh_token_as_access_token_is_unauthenticated(server: Harness) -> None:
    user = await server.create_user(Role.ADMIN)
    pair = (await server.login(user.username)).tokens
    error = await rpc_error(whoami(server, pair.refresh_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(
        server.decisions.GetDecisionStats(
            decision_pb2.GetDecisionStatsRequest(), metadata=bearer(pair.refresh_token)
        )
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_access_token_is_not_a_refresh_token(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    pair = (await server.login(user.username)).tokens
    error = await rpc_error(_refresh(server, pair.access_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_refresh_rotates_the_token(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    first = (await server.login(user.username)).tokens
    second = await _refresh(server, first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert (await whoami(server, second.access_token)).username == user.username
    third = await _refresh(server, second.refresh_token)
    assert (await whoami(server, third.access_token)).username == user.username


async def test_refresh_reuse_revokes_the_whole_family(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    first = (await server.login(user.username)).tokens
    second = await _refresh(server, first.refresh_token)
    # The first token again: a thief or the victim replays it; nobody can tell which.
    error = await rpc_error(_refresh(server, first.refresh_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # The newer token of the family stops working too, and so does its access token.
    error = await rpc_error(_refresh(server, second.refresh_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(whoami(server, second.access_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # Another session of the same user is untouched.
    other = (await server.login(user.username)).tokens
    await _refresh(server, other.refresh_token)


async def test_expired_refresh_token_is_unauthenticated(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    pair = (await server.login(user.username)).tokens
    server.clock.advance(server.running.settings.refresh_token_ttl + timedelta(seconds=1))
    error = await rpc_error(_refresh(server, pair.refresh_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_logout_ends_the_session(server: Harness) -> None:
    user = await server.create_user(Role.VIEWER)
    pair = (await server.login(user.username)).tokens
    await server.auth.Logout(
        auth_pb2.LogoutRequest(refresh_token=pair.refresh_token),
        metadata=bearer(pair.access_token),
    )
    error = await rpc_error(_refresh(server, pair.refresh_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(whoami(server, pair.access_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_logout_cannot_end_someone_elses_session(server: Harness) -> None:
    victim = (await server.login((await server.create_user(Role.VIEWER)).username)).tokens
    attacker = await server.token(Role.VIEWER)
    error = await rpc_error(
        server.auth.Logout(
            auth_pb2.LogoutRequest(refresh_token=victim.refresh_token), metadata=bearer(attacker)
        )
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    await _refresh(server, victim.refresh_token)


async def test_change_password_keeps_this_session_and_ends_the_others(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    mine = (await server.login(user.username)).tokens
    other = (await server.login(user.username)).tokens
    new_password = "another-long-password-77"
    await server.auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=new_password),
        metadata=bearer(mine.access_token),
    )
    assert (await whoami(server, mine.access_token)).username == user.username
    await _refresh(server, mine.refresh_token)
    error = await rpc_error(whoami(server, other.access_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(_refresh(server, other.refresh_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(server.login(user.username, PASSWORD))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert (await server.login(user.username, new_password)).tokens.access_token


async def test_change_password_needs_the_current_one(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    token = (await server.login(user.username)).tokens.access_token
    error = await rpc_error(
        server.auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(
                current_password="not-the-password-1", new_password="another-long-password-77"
            ),
            metadata=bearer(token),
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (await server.login(user.username)).tokens.access_token


async def test_deactivated_users_token_stops_at_once(server: Harness) -> None:
    admin = await server.token(Role.ADMIN)
    user = await server.create_user(Role.ANALYST)
    pair = (await server.login(user.username)).tokens
    assert (await whoami(server, pair.access_token)).active
    await _update(server, admin, user.id, active=False)
    error = await rpc_error(whoami(server, pair.access_token))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    error = await rpc_error(_refresh(server, pair.refresh_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(server.login(user.username))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_deactivation_on_one_replica_stops_the_token_on_another(
    server: Harness, make_server: ServerFactory
) -> None:
    admin = await server.token(Role.ADMIN)
    user = await server.create_user(Role.ANALYST)
    token = (await server.login(user.username)).tokens.access_token
    async with make_server() as replica:
        assert (await whoami(replica, token)).username == user.username
        await _update(server, admin, user.id, active=False)
        error = await rpc_error(whoami(replica, token))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_role_change_takes_effect_at_once(server: Harness) -> None:
    admin = await server.token(Role.ADMIN)
    user = await server.create_user(Role.ADMIN)
    token = (await server.login(user.username)).tokens.access_token
    await server.auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(token))
    await _update(server, admin, user.id, role=Role.VIEWER.value)
    error = await rpc_error(
        server.auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=bearer(token))
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert (await whoami(server, token)).role == Role.VIEWER.value


async def test_admin_password_reset_ends_every_session(server: Harness) -> None:
    admin = await server.token(Role.ADMIN)
    user = await server.create_user(Role.ANALYST)
    pair = (await server.login(user.username)).tokens
    await _update(server, admin, user.id, new_password="reset-by-the-admin-0001")
    error = await rpc_error(whoami(server, pair.access_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(_refresh(server, pair.refresh_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert (await server.login(user.username, "reset-by-the-admin-0001")).tokens.access_token


async def test_get_current_user_answers_from_the_one_read_its_access_check_made(
    server: Harness,
) -> None:
    token = await server.token(Role.ANALYST)
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = server.running.engine.sync_engine
    account_reads_before = server.running.hot.executed["account"] if server.running.hot else 0
    event.listen(engine, "before_cursor_execute", seen)
    try:
        me = await whoami(server, token)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert me.role == Role.ANALYST.value
    users_reads = len([s for s in statements if "FROM users" in s])
    hot = server.running.hot
    if hot is None:
        assert users_reads == 1, statements
    else:
        # PostgreSQL: the check's one read goes through the driver (store/hot.py).
        assert users_reads == 0, statements
        assert hot.executed["account"] == account_reads_before + 1
