"""Brute force in bursts: concurrent guesses at one account get at most the limit judged."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import grpc
from hitl.v1 import auth_pb2

from hitl_grpc.domain.values import Role
from tests.harness import PASSWORD, Harness, bearer
from tests.signin import challenge, enrolled, rpc_error, totp_code, verify

BURST = 60


async def _codes(calls: list[Any]) -> Counter[grpc.StatusCode]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    codes: Counter[grpc.StatusCode] = Counter()
    for result in results:
        assert isinstance(result, grpc.aio.AioRpcError), result
        codes[result.code()] += 1
    return codes


async def test_a_burst_of_wrong_logins_judges_at_most_the_limit(server: Harness) -> None:
    user = await server.create_user(Role.ADMIN)
    limit = server.running.settings.login_max_failures
    codes = await _codes(
        [server.login(user.username, f"wrong-password-{n:03d}") for n in range(BURST)]
    )
    assert codes[grpc.StatusCode.UNAUTHENTICATED] <= limit
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= BURST - limit
    assert set(codes) <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_a_burst_of_wrong_current_passwords_judges_at_most_the_limit(
    server: Harness,
) -> None:
    user = await server.create_user(Role.ANALYST)
    token = (await server.login(user.username)).tokens.access_token
    limit = server.running.settings.login_max_failures
    calls = [
        server.auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(
                current_password=f"guess-{n:03d}-of-the-password", new_password="x" * 20
            ),
            metadata=bearer(token),
            timeout=30,
        )
        for n in range(BURST)
    ]
    codes = await _codes(calls)
    assert codes[grpc.StatusCode.INVALID_ARGUMENT] <= limit
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= BURST - limit


async def test_a_burst_of_wrong_mfa_codes_judges_at_most_the_limit(server: Harness) -> None:
    account = await enrolled(server)
    token = await challenge(server, account.user.username)
    right = totp_code(server, account.secret)
    wrong = [f"{(int(right) + 1 + n) % 1_000_000:06d}" for n in range(BURST)]
    limit = server.running.settings.login_max_failures
    codes = await _codes([verify(server, token, code) for code in wrong])
    assert codes[grpc.StatusCode.UNAUTHENTICATED] <= limit
    assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= BURST - limit


async def test_a_password_login_does_not_forgive_wrong_mfa_codes(server: Harness) -> None:
    account = await enrolled(server)
    limit = server.running.settings.login_max_failures
    right = totp_code(server, account.secret)
    for n in range(limit):
        # A fresh password login before every guess, as an attacker with the password would.
        token = await challenge(server, account.user.username)
        error = await rpc_error(verify(server, token, f"{(int(right) + 1 + n) % 1_000_000:06d}"))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    token = await challenge(server, account.user.username)
    error = await rpc_error(verify(server, token, right))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_racing_successes_and_failures_for_one_account_never_fail_inside(
    server: Harness,
) -> None:
    user = await server.create_user(Role.ANALYST)
    for _ in range(10):
        # Each round: one success forgiving the count while a failure counts against it.
        calls = [server.login(user.username), server.login(user.username, "wrong-password-1")]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                assert result.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                ), result
    assert (await server.login(user.username, PASSWORD)).tokens.access_token


async def test_a_burst_of_right_logins_for_one_account_all_get_in(server: Harness) -> None:
    # Fifty workers of one machine account signing in at once: they queue, none is locked out.
    user = await server.create_user(Role.SERVICE)
    replies = await asyncio.gather(*(server.login(user.username) for _ in range(50)))
    assert all(reply.tokens.access_token for reply in replies)
