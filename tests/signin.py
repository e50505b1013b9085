"""Helpers for the account and security tests: MFA enrolment, codes, rich error details."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pyotp
import pytest
from google.rpc import error_details_pb2, status_pb2
from hitl.v1 import auth_pb2

from hitl_grpc.domain.ports import Repositories
from hitl_grpc.domain.values import Role, User, UserId
from tests.harness import PASSWORD, Harness, bearer


async def add_orphan_refresh_token(uow: Repositories) -> None:
    """A refresh token of a user that does not exist: the foreign key refuses it."""
    now = datetime.now(UTC)
    await uow.refresh_tokens.add(
        token_id=str(uuid.uuid4()),
        user_id=UserId(str(uuid.uuid4())),
        family_id=str(uuid.uuid4()),
        token_hash=uuid.uuid4().hex,
        issued_at=now,
        expires_at=now + timedelta(hours=1),
    )


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """The error a call fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def retry_delay_s(error: grpc.aio.AioRpcError) -> float:
    """The google.rpc.RetryInfo delay from the trailing grpc-status-details-bin."""
    trailers: Any = error.trailing_metadata() or ()
    [blob] = [value for key, value in trailers if key == "grpc-status-details-bin"]
    assert isinstance(blob, bytes)
    status = status_pb2.Status.FromString(blob)
    assert status.code == error.code().value[0]
    retry = error_details_pb2.RetryInfo()
    assert any(detail.Unpack(retry) for detail in status.details)
    return float(retry.retry_delay.ToMilliseconds()) / 1000


def totp_code(server: Harness, secret: str, steps_ahead: int = 0) -> str:
    """The TOTP code at the server's clock (optionally some 30 s steps later)."""
    return pyotp.TOTP(secret).at(server.clock.now() + timedelta(seconds=30 * steps_ahead))


def next_step(server: Harness) -> None:
    """Moves the server clock one TOTP step on, so the next code is a fresh one."""
    server.clock.advance(timedelta(seconds=30))


@dataclass
class Enrolled:
    """An account with MFA on."""

    user: User
    secret: str
    backup_codes: list[str]
    access_token: str


async def enrolled(server: Harness, role: Role = Role.ANALYST) -> Enrolled:
    """A new account that went through SetupMfa and ConfirmMfa over the wire."""
    user = await server.create_user(role)
    token = (await server.login(user.username)).tokens.access_token
    setup = await server.auth.SetupMfa(
        auth_pb2.SetupMfaRequest(password=PASSWORD), metadata=bearer(token), timeout=10
    )
    confirmed = await server.auth.ConfirmMfa(
        auth_pb2.ConfirmMfaRequest(code=totp_code(server, setup.secret)),
        metadata=bearer(token),
        timeout=10,
    )
    assert confirmed.user.mfa_enabled
    next_step(server)  # the confirming code's step is spent
    return Enrolled(user, setup.secret, list(setup.backup_codes), token)


async def challenge(server: Harness, username: str) -> str:
    """The challenge token a password login of an MFA account returns."""
    reply = await server.login(username)
    assert reply.WhichOneof("result") == "mfa_challenge"
    return reply.mfa_challenge.challenge_token


async def verify(server: Harness, challenge_token: str, code: str) -> auth_pb2.TokenPair:
    """VerifyMfa over the wire."""
    reply = await server.auth.VerifyMfa(
        auth_pb2.VerifyMfaRequest(challenge_token=challenge_token, code=code), timeout=10
    )
    return reply.tokens


async def whoami(server: Harness, token: str) -> auth_pb2.User:
    """GetCurrentUser with an access token."""
    reply = await server.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=10
    )
    return reply.user
