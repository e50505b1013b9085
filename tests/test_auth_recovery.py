"""Ways back: an admin lifts a lockout or resets MFA; one noisy address does not lock everyone."""

from __future__ import annotations

from datetime import timedelta

import grpc
from hitl.v1 import audit_pb2, auth_pb2

from hitl_grpc.accounts.users import UserUpdate
from hitl_grpc.domain.values import Role
from tests.harness import Harness, Metadata, ServerFactory
from tests.signin import enrolled, retry_delay_s, rpc_error, whoami

WRONG = "wrong-password-000"


async def _lock(server: Harness, username: str) -> None:
    for _ in range(server.running.settings.login_max_failures):
        await rpc_error(server.login(username, WRONG))
    error = await rpc_error(server.login(username))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def _targets(server: Harness, admin: Metadata, kind: str) -> list[str]:
    page = await server.audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(kind=kind), metadata=admin, timeout=10
    )
    return [e.target for e in page.events]


async def test_an_admin_unlocks_a_locked_account_by_name(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    await _lock(server, user.username)
    admin = await server.as_role(Role.ADMIN)
    reply = await server.auth.UnlockUser(
        auth_pb2.UnlockUserRequest(username=user.username), metadata=admin, timeout=10
    )
    assert reply.user.id == user.id
    assert (await server.login(user.username)).tokens.access_token
    assert user.username in await _targets(server, admin, "user.unlocked")


async def test_an_admin_unlocks_by_id_and_lifts_a_peer_lock(make_server: ServerFactory) -> None:
    async with make_server(login_max_failures_per_peer=3, login_peer_trust=timedelta(0)) as server:
        admin = await server.as_role(Role.ADMIN)
        user = await server.create_user(Role.ANALYST)
        for n in range(3):
            await rpc_error(server.login(f"guess-{n}", WRONG))
        locked = await rpc_error(server.login(user.username))
        assert locked.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await server.auth.UnlockUser(
            auth_pb2.UnlockUserRequest(user_id=user.id, peer="ipv4:127.0.0.1:1234"),
            metadata=admin,
            timeout=10,
        )
        assert (await server.login(user.username)).tokens.access_token


async def test_unlock_of_an_unknown_user_is_not_found(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    for request in (
        auth_pb2.UnlockUserRequest(username="nobody-here"),
        auth_pb2.UnlockUserRequest(user_id="00000000-0000-0000-0000-000000000000"),
    ):
        error = await rpc_error(server.auth.UnlockUser(request, metadata=admin, timeout=10))
        assert error.code() is grpc.StatusCode.NOT_FOUND
    error = await rpc_error(
        server.auth.UnlockUser(auth_pb2.UnlockUserRequest(), metadata=admin, timeout=10)
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_only_an_admin_may_unlock_or_reset_mfa(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    user = await server.create_user(Role.VIEWER)
    for call in (
        server.auth.UnlockUser(
            auth_pb2.UnlockUserRequest(user_id=user.id), metadata=analyst, timeout=10
        ),
        server.auth.ResetUserMfa(
            auth_pb2.ResetUserMfaRequest(user_id=user.id), metadata=analyst, timeout=10
        ),
    ):
        assert (await rpc_error(call)).code() is grpc.StatusCode.PERMISSION_DENIED


async def test_a_password_reset_lifts_the_lockout(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    await _lock(server, user.username)
    fresh = "a-brand-new-password-77"
    await server.running.accounts.users.update(
        user.id, UserUpdate(new_password=fresh), actor="test", peer="test"
    )
    assert (await server.login(user.username, fresh)).tokens.access_token


async def test_an_admin_resets_mfa_and_ends_the_sessions(server: Harness) -> None:
    account = await enrolled(server)
    admin = await server.as_role(Role.ADMIN)
    reply = await server.auth.ResetUserMfa(
        auth_pb2.ResetUserMfaRequest(user_id=account.user.id), metadata=admin, timeout=10
    )
    assert not reply.user.mfa_enabled
    # Whoever enrolled that factor may be signed in: their sessions are gone.
    error = await rpc_error(whoami(server, account.access_token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert (await server.login(account.user.username)).WhichOneof("result") == "tokens"
    assert account.user.username in await _targets(server, admin, "user.mfa_reset")


async def test_reset_mfa_of_an_unknown_user_is_not_found(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    error = await rpc_error(
        server.auth.ResetUserMfa(
            auth_pb2.ResetUserMfaRequest(user_id="no-such-id"), metadata=admin, timeout=10
        )
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND


async def test_a_locked_peer_still_lets_in_who_signed_in_from_it(
    make_server: ServerFactory,
) -> None:
    async with make_server(login_max_failures_per_peer=3) as server:
        regular = await server.create_user(Role.ADMIN)
        assert (await server.login(regular.username)).tokens.access_token
        stranger = await server.create_user(Role.ANALYST)
        for n in range(3):
            await rpc_error(server.login(f"guess-{n}", WRONG))
        # Someone who never signed in from this address is refused while it is locked...
        error = await rpc_error(server.login(stranger.username))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_delay_s(error) > 0
        # ...but the admin who works from it is not locked out by the guessing next door.
        assert (await server.login(regular.username)).tokens.access_token


async def test_a_strict_peer_lock_refuses_everyone(make_server: ServerFactory) -> None:
    async with make_server(login_max_failures_per_peer=3, login_peer_trust=timedelta(0)) as server:
        regular = await server.create_user(Role.ANALYST)
        assert (await server.login(regular.username)).tokens.access_token
        for n in range(3):
            await rpc_error(server.login(f"guess-{n}", WRONG))
        error = await rpc_error(server.login(regular.username))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
