"""The audit trail: one row per audited action, with its peer; filters and cursor paging."""

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from hitl.v1 import access_pb2, audit_pb2, auth_pb2

from hitl_grpc.domain.values import AuditOutcome, Role
from tests.audit_support import audit_rows
from tests.harness import PASSWORD, Harness, bearer
from tests.signin import next_step, rpc_error, totp_code


async def test_every_audited_action_leaves_one_row_with_the_peer(server: Harness) -> None:
    admin_user = await server.create_user(Role.ADMIN)
    admin = bearer((await server.login(admin_user.username)).tokens.access_token)
    name = "audited-user"
    state: dict[str, Any] = {}

    async def create() -> None:
        reply = await server.auth.CreateUser(
            auth_pb2.CreateUserRequest(
                username=name, password=PASSWORD, role=access_pb2.ROLE_ANALYST
            ),
            metadata=admin,
        )
        state["id"] = reply.user.id

    async def login() -> None:
        state["pair"] = (await server.login(name)).tokens

    async def bad_login() -> None:
        await rpc_error(server.login(name, "not-the-password"))

    async def refresh() -> None:
        state["old"] = state["pair"].refresh_token
        reply = await server.auth.RefreshToken(
            auth_pb2.RefreshTokenRequest(refresh_token=state["old"])
        )
        state["pair"] = reply.tokens

    async def reuse() -> None:
        await rpc_error(
            server.auth.RefreshToken(auth_pb2.RefreshTokenRequest(refresh_token=state["old"]))
        )
        await login()

    def me() -> tuple[tuple[str, str], ...]:
        return bearer(state["pair"].access_token)

    async def setup() -> None:
        state["secret"] = (
            await server.auth.SetupMfa(auth_pb2.SetupMfaRequest(password=PASSWORD), metadata=me())
        ).secret

    async def confirm() -> None:
        code = totp_code(server, state["secret"])
        await server.auth.ConfirmMfa(auth_pb2.ConfirmMfaRequest(code=code), metadata=me())
        next_step(server)

    async def verify() -> None:
        challenge = (await server.login(name)).mfa_challenge.challenge_token
        code = totp_code(server, state["secret"])
        reply = await server.auth.VerifyMfa(
            auth_pb2.VerifyMfaRequest(challenge_token=challenge, code=code)
        )
        state["pair"] = reply.tokens
        next_step(server)

    async def disable() -> None:
        code = totp_code(server, state["secret"])
        await server.auth.DisableMfa(auth_pb2.DisableMfaRequest(code=code), metadata=me())

    async def change_password() -> None:
        await server.auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(
                current_password=PASSWORD, new_password="a-new-long-password-99"
            ),
            metadata=me(),
        )

    async def logout() -> None:
        await server.auth.Logout(auth_pb2.LogoutRequest(), metadata=me())

    async def update() -> None:
        await server.auth.UpdateUser(
            auth_pb2.UpdateUserRequest(
                user_id=state["id"],
                full_name="Audited",
                update_mask=field_mask_pb2.FieldMask(paths=["full_name"]),
            ),
            metadata=admin,
        )

    steps: list[tuple[str, Callable[[], Awaitable[None]], AuditOutcome]] = [
        ("user.created", create, AuditOutcome.SUCCESS),
        ("auth.login", login, AuditOutcome.SUCCESS),
        ("auth.login", bad_login, AuditOutcome.FAILURE),
        ("auth.refresh", refresh, AuditOutcome.SUCCESS),
        ("auth.refresh.reuse_detected", reuse, AuditOutcome.DENIED),
        ("auth.mfa.setup", setup, AuditOutcome.SUCCESS),
        ("auth.mfa.confirm", confirm, AuditOutcome.SUCCESS),
        ("auth.mfa.verify", verify, AuditOutcome.SUCCESS),
        ("auth.mfa.disable", disable, AuditOutcome.SUCCESS),
        ("auth.password.change", change_password, AuditOutcome.SUCCESS),
        ("auth.logout", logout, AuditOutcome.SUCCESS),
        ("user.updated", update, AuditOutcome.SUCCESS),
    ]
    for kind, action, outcome in steps:
        before = await audit_rows(server, kind, name)
        await action()
        after = await audit_rows(server, kind, name)
        assert len(after) == len(before) + 1, kind
        newest = after[0]
        assert newest.outcome is outcome, kind
        assert newest.peer.startswith(("ipv4:127.0.0.1:", "ipv6:")), (kind, newest.peer)
        assert newest.actor in (name, admin_user.username), kind


async def test_list_audit_events_filters(server: Harness) -> None:
    alice = await server.create_user(Role.ANALYST, "alice")
    await server.create_user(Role.ANALYST, "bob")
    await server.login("alice")
    await rpc_error(server.login("bob", "not-the-password"))
    start = Timestamp()
    start.FromDatetime(server.clock.now())
    server.clock.advance(timedelta(hours=1))
    await server.login("alice")
    admin = await server.as_role(Role.ADMIN)

    async def events(**filters: Any) -> list[audit_pb2.AuditEvent]:
        reply = await server.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_size=1000, **filters), metadata=admin
        )
        return list(reply.events)

    by_alice = await events(actor="alice", kind="auth.login")
    assert len(by_alice) == 2 and all(e.target == "alice" for e in by_alice)
    assert by_alice[0].id > by_alice[1].id  # newest first
    failed = [e for e in await events(target="bob") if e.kind == "auth.login"]
    assert [e.outcome for e in failed] == [audit_pb2.AUDIT_OUTCOME_FAILURE]
    assert failed[0].peer and failed[0].details["reason"] == "bad credentials"
    later = await events(actor="alice", since=start)
    assert len(later) == 1
    earlier = await events(target="alice", until=start)
    assert {e.kind for e in earlier} == {"user.created", "auth.login"}
    created = await events(kind="user.created", target=alice.username)
    assert len(created) == 1 and created[0].details["role"] == "ANALYST"


async def test_list_audit_events_pages_with_a_cursor(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    user = await server.create_user(Role.VIEWER)
    for _ in range(7):
        await server.login(user.username)
    ids: list[int] = []
    token = ""
    while True:
        reply = await server.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(
                kind="auth.login", target=user.username, page_size=3, page_token=token
            ),
            metadata=admin,
        )
        ids.extend(e.id for e in reply.events)
        token = reply.next_page_token
        if not token:
            break
    assert len(ids) == 7 and ids == sorted(set(ids), reverse=True)


async def test_list_audit_events_is_for_admins_only(server: Harness) -> None:
    for role in (Role.ANALYST, Role.VIEWER, Role.SERVICE):
        error = await rpc_error(
            server.audit.ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(), metadata=await server.as_role(role)
            )
        )
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, role


async def test_a_forged_audit_page_token_is_invalid_argument(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    error = await rpc_error(
        server.audit.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(page_token="dTpub3QtYW4taWQ"), metadata=admin
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
