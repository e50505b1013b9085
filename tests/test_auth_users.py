"""User administration: unique NFKC case-insensitive names, paging, masks, the last admin."""

import asyncio
from typing import Any

import grpc
from google.protobuf import field_mask_pb2
from hitl.v1 import access_pb2, auth_pb2

from hitl_grpc.accounts.users import UserUpdate
from hitl_grpc.domain.values import Role
from tests.harness import PASSWORD, Harness, Metadata, bearer
from tests.signin import rpc_error


async def _create(server: Harness, admin: Metadata, username: str, **extra: Any) -> auth_pb2.User:
    request = auth_pb2.CreateUserRequest(
        username=username, password=PASSWORD, role=extra.pop("role", Role.ANALYST.value), **extra
    )
    return (await server.auth.CreateUser(request, metadata=admin, timeout=10)).user


async def _update(server: Harness, admin: Metadata, user_id: str, **fields: Any) -> auth_pb2.User:
    request = auth_pb2.UpdateUserRequest(
        user_id=user_id, update_mask=field_mask_pb2.FieldMask(paths=list(fields)), **fields
    )
    return (await server.auth.UpdateUser(request, metadata=admin, timeout=10)).user


async def test_create_user_returns_the_profile(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    user = await _create(
        server, admin, "Zoë", role=Role.VIEWER.value, email="zoe@example.org", full_name="Zoë Q"
    )
    assert (user.username, user.role, user.email, user.full_name) == (
        "Zoë",
        Role.VIEWER.value,
        "zoe@example.org",
        "Zoë Q",
    )
    assert user.active and not user.mfa_enabled and user.id
    assert (await server.login("zoë")).tokens.access_token


async def test_duplicate_names_differing_in_case_or_width_are_already_exists(
    server: Harness,
) -> None:
    admin = await server.as_role(Role.ADMIN)
    await _create(server, admin, "Analyst")
    full_width = "".join(chr(ord(ch) + 0xFEE0) for ch in "Analyst")
    for clash in ("analyst", "ANALYST", full_width):
        error = await rpc_error(_create(server, admin, clash))
        assert error.code() is grpc.StatusCode.ALREADY_EXISTS, clash


async def test_two_concurrent_creates_of_one_name_have_one_winner(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    results = await asyncio.gather(
        *(_create(server, admin, name) for name in ("Racer", "racer", "RACER")),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, auth_pb2.User)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1 and len(losses) == 2
    assert all(e.code() is grpc.StatusCode.ALREADY_EXISTS for e in losses)


async def test_bad_fields_are_invalid_argument(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    for username, password, role in [
        ("", PASSWORD, access_pb2.ROLE_ANALYST),
        ("short-pw", "short", access_pb2.ROLE_ANALYST),
        ("pw-has-name", "pw-has-name-and-more", access_pb2.ROLE_ANALYST),
        ("no-role", PASSWORD, access_pb2.ROLE_UNSPECIFIED),
    ]:
        error = await rpc_error(
            server.auth.CreateUser(
                auth_pb2.CreateUserRequest(username=username, password=password, role=role),
                metadata=admin,
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, username


async def test_only_admins_manage_users(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    error = await rpc_error(_create(server, analyst, "someone"))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    error = await rpc_error(server.auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=analyst))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_list_users_pages_through_everyone_once(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    for n in range(7):
        await _create(server, admin, f"user-{n:02d}")
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await server.auth.ListUsers(
            auth_pb2.ListUsersRequest(page_size=3, page_token=token), metadata=admin
        )
        seen.extend(u.username for u in reply.users)
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    # 7 created + the bootstrap admin + the calling admin.
    assert len(seen) == len(set(seen)) == 9 and pages == 3
    assert seen == sorted(seen, key=str.casefold)


async def test_a_forged_page_token_is_invalid_argument(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    error = await rpc_error(
        server.auth.ListUsers(auth_pb2.ListUsersRequest(page_token="garbage!"), metadata=admin)
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_update_user_changes_only_the_masked_fields(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    user = await _create(server, admin, "masked", email="a@example.org", full_name="Before")
    request = auth_pb2.UpdateUserRequest(
        user_id=user.id,
        full_name="After",
        email="ignored@example.org",
        role=access_pb2.ROLE_VIEWER,
        update_mask=field_mask_pb2.FieldMask(paths=["full_name"]),
    )
    updated = (await server.auth.UpdateUser(request, metadata=admin)).user
    assert (updated.full_name, updated.email, updated.role) == (
        "After",
        "a@example.org",
        Role.ANALYST.value,
    )


async def test_update_user_mask_must_name_known_fields(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    user = await _create(server, admin, "masked")
    for paths in ([], ["username"]):
        error = await rpc_error(
            server.auth.UpdateUser(
                auth_pb2.UpdateUserRequest(
                    user_id=user.id, update_mask=field_mask_pb2.FieldMask(paths=paths)
                ),
                metadata=admin,
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_update_unknown_user_is_not_found(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    error = await rpc_error(_update(server, admin, "no-such-id", full_name="x"))
    assert error.code() is grpc.StatusCode.NOT_FOUND


async def test_the_last_active_admin_cannot_be_demoted_or_deactivated(server: Harness) -> None:
    me = await server.create_user(Role.ADMIN)
    admin = bearer((await server.login(me.username)).tokens.access_token)
    bootstrap = await server.running.accounts.users.find("admin")
    await _update(server, admin, bootstrap.id, active=False)
    for change in ({"role": Role.ANALYST.value}, {"active": False}):
        error = await rpc_error(_update(server, admin, me.id, **change))
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    # With a second admin back, the demotion goes through.
    await _update(server, admin, bootstrap.id, active=True)
    demoted = await _update(server, admin, me.id, role=Role.ANALYST.value)
    assert demoted.role == Role.ANALYST.value


async def test_two_admins_demoting_each_other_at_once_leave_one(server: Harness) -> None:
    a = await server.create_user(Role.ADMIN)
    b = await server.create_user(Role.ADMIN)
    bootstrap = await server.running.accounts.users.find("admin")
    await server.running.accounts.users.update(
        bootstrap.id, UserUpdate(active=False), actor="test", peer="test"
    )
    ma = bearer((await server.login(a.username)).tokens.access_token)
    mb = bearer((await server.login(b.username)).tokens.access_token)
    results = await asyncio.gather(
        _update(server, ma, b.id, role=Role.VIEWER.value),
        _update(server, mb, a.id, role=Role.VIEWER.value),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    # Either one demotion won and the other found no admin left to do it (its caller was
    # just demoted, or it would remove the last admin) -- never both.
    assert len(failures) == 1
    assert failures[0].code() in (
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
    )
