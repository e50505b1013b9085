"""Brute force: failures lock a username and a peer, in the database, with growing delays."""

from datetime import timedelta

import grpc

from hitl_grpc.domain.values import AuditOutcome, Role
from tests.audit_support import audit_rows
from tests.harness import Harness, ServerFactory
from tests.signin import retry_delay_s, rpc_error

WRONG = "wrong-password-000"


async def _fail(server: Harness, username: str, times: int) -> None:
    for _ in range(times):
        error = await rpc_error(server.login(username, WRONG))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_lockout_after_n_failures_with_retry_info(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    limit = server.running.settings.login_max_failures
    await _fail(server, user.username, limit)
    error = await rpc_error(server.login(user.username, WRONG))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = retry_delay_s(error)
    assert 0 < delay <= server.running.settings.login_lockout.total_seconds()


async def test_correct_password_during_lockout_is_refused(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    await _fail(server, user.username, server.running.settings.login_max_failures)
    error = await rpc_error(server.login(user.username))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Once the delay has passed, the right password gets in again.
    server.clock.advance(timedelta(seconds=retry_delay_s(error) + 1))
    assert (await server.login(user.username)).tokens.access_token


async def test_lockout_grows_with_each_repeat(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    limit = server.running.settings.login_max_failures
    delays = []
    for _ in range(3):
        await _fail(server, user.username, limit)
        error = await rpc_error(server.login(user.username, WRONG))
        delays.append(retry_delay_s(error))
        server.clock.advance(timedelta(seconds=delays[-1] + 1))
    assert delays[0] < delays[1] < delays[2]


async def test_unknown_user_is_locked_like_a_known_one(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    limit = server.running.settings.login_max_failures
    outcomes = []
    for name in (user.username, "nobody-by-this-name"):
        await _fail(server, name, limit)
        error = await rpc_error(server.login(name, WRONG))
        outcomes.append((error.code(), error.details(), retry_delay_s(error)))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_lockout_holds_across_replicas(server: Harness, make_server: ServerFactory) -> None:
    user = await server.create_user(Role.ANALYST)
    await _fail(server, user.username, server.running.settings.login_max_failures)
    async with make_server(clock=server.clock) as replica:
        error = await rpc_error(replica.login(user.username))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_failures_from_one_peer_across_usernames_lock_the_peer(
    make_server: ServerFactory,
) -> None:
    async with make_server(login_max_failures_per_peer=3) as server:
        user = await server.create_user(Role.ANALYST)
        for n in range(3):
            await _fail(server, f"guess-{n}", 1)
        error = await rpc_error(server.login(user.username))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_delay_s(error) > 0


async def test_successful_login_resets_the_count(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    limit = server.running.settings.login_max_failures
    await _fail(server, user.username, limit - 1)
    await server.login(user.username)
    await _fail(server, user.username, limit - 1)
    assert (await server.login(user.username)).tokens.access_token


async def test_failures_outside_the_window_are_forgotten(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    limit = server.running.settings.login_max_failures
    await _fail(server, user.username, limit - 1)
    server.clock.advance(server.running.settings.login_window + timedelta(seconds=1))
    await _fail(server, user.username, limit - 1)
    assert (await server.login(user.username)).tokens.access_token


async def test_refusals_by_one_lock_write_one_audit_row(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    await _fail(server, user.username, server.running.settings.login_max_failures)
    for _ in range(30):
        error = await rpc_error(server.login(user.username, WRONG))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    rows = await audit_rows(server, "auth.login", user.username)
    denied = [r for r in rows if r.outcome is AuditOutcome.DENIED]
    # A caller hammering a locked account cannot make the service write without bound.
    assert len(denied) == 1
    assert denied[0].details.get("reason") == "locked"
    # The next lock of the same account is audited again.
    server.clock.advance(timedelta(seconds=retry_delay_s(error) + 1))
    await _fail(server, user.username, server.running.settings.login_max_failures)
    await rpc_error(server.login(user.username, WRONG))
    rows = await audit_rows(server, "auth.login", user.username)
    assert len([r for r in rows if r.outcome is AuditOutcome.DENIED]) == 2
