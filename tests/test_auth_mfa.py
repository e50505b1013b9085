"""MFA: a challenge is not an access token, codes can't be replayed, backup codes work once."""

from datetime import timedelta

import grpc
import pyotp
import pytest
from hitl.v1 import auth_pb2, decision_pb2

from hitl_grpc.domain.values import Role
from tests.harness import PASSWORD, Harness, bearer
from tests.signin import (
    challenge,
    enrolled,
    next_step,
    rpc_error,
    totp_code,
    verify,
    whoami,
)

# str.isdigit() says yes to these; only ASCII digits are TOTP codes.
ARABIC_INDIC = "".join(chr(0x0660 + d) for d in range(1, 7))
FULLWIDTH = "".join(chr(0xFF10 + d) for d in range(1, 7))


def _not(code: str) -> str:
    """A 6-digit code that is not this one."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_login_with_mfa_on_returns_only_a_challenge(server: Harness) -> None:
    account = await enrolled(server)
    reply = await server.login(account.user.username)
    assert reply.WhichOneof("result") == "mfa_challenge"
    assert not reply.HasField("tokens")
    ttl = server.running.settings.mfa_challenge_ttl
    expires = reply.mfa_challenge.expires_at.ToDatetime().timestamp()
    assert abs(expires - (server.clock.now() + ttl).timestamp()) < 5


async def test_challenge_token_on_get_current_user_is_unauthenticated(server: Harness) -> None:
    account = await enrolled(server)
    token = await challenge(server, account.user.username)
    error = await rpc_error(whoami(server, token))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_challenge_token_on_a_decision_rpc_is_unauthenticated(server: Harness) -> None:
    account = await enrolled(server, Role.ADMIN)
    token = await challenge(server, account.user.username)
    error = await rpc_error(
        server.decisions.GetDecisionStats(
            decision_pb2.GetDecisionStatsRequest(), metadata=bearer(token), timeout=10
        )
    )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # The access token of the same account does get in, so the token type was refused.
    stats = await server.decisions.GetDecisionStats(
        decision_pb2.GetDecisionStatsRequest(),
        metadata=bearer(account.access_token),
        timeout=10,
    )
    assert stats.pending == 0


async def test_verify_mfa_with_a_totp_code_gives_tokens(server: Harness) -> None:
    account = await enrolled(server)
    pair = await verify(
        server, await challenge(server, account.user.username), totp_code(server, account.secret)
    )
    assert (await whoami(server, pair.access_token)).username == account.user.username


async def test_access_token_is_refused_by_verify_mfa(server: Harness) -> None:
    account = await enrolled(server)
    error = await rpc_error(verify(server, account.access_token, totp_code(server, account.secret)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_totp_code_cannot_be_replayed(server: Harness) -> None:
    account = await enrolled(server)
    code = totp_code(server, account.secret)
    await verify(server, await challenge(server, account.user.username), code)
    error = await rpc_error(verify(server, await challenge(server, account.user.username), code))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # A fresh code in the next step still works: only the replay was refused.
    next_step(server)
    await verify(
        server, await challenge(server, account.user.username), totp_code(server, account.secret)
    )


async def test_codes_one_step_off_are_accepted_but_not_further(server: Harness) -> None:
    account = await enrolled(server)
    name = account.user.username
    far = totp_code(server, account.secret, steps_ahead=3)
    error = await rpc_error(verify(server, await challenge(server, name), far))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    ahead = totp_code(server, account.secret, steps_ahead=1)
    await verify(server, await challenge(server, name), ahead)


async def test_backup_code_works_once(server: Harness) -> None:
    account = await enrolled(server)
    assert len(account.backup_codes) == 10 and len(set(account.backup_codes)) == 10
    code = account.backup_codes[0]
    pair = await verify(server, await challenge(server, account.user.username), code)
    assert pair.access_token
    error = await rpc_error(verify(server, await challenge(server, account.user.username), code))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    # Another unused one works, in any case and spacing.
    other = account.backup_codes[1].upper().replace("-", "")
    await verify(server, await challenge(server, account.user.username), other)


async def test_mfa_is_off_until_confirmed(server: Harness) -> None:
    user = await server.create_user(Role.VIEWER)
    token = (await server.login(user.username)).tokens.access_token
    setup = await server.auth.SetupMfa(
        auth_pb2.SetupMfaRequest(password=PASSWORD), metadata=bearer(token), timeout=10
    )
    assert setup.otpauth_uri.startswith("otpauth://totp/")
    assert pyotp.parse_uri(setup.otpauth_uri).secret == setup.secret
    assert (await server.login(user.username)).WhichOneof("result") == "tokens"
    wrong = await rpc_error(
        server.auth.ConfirmMfa(
            auth_pb2.ConfirmMfaRequest(code=_not(totp_code(server, setup.secret))),
            metadata=bearer(token),
            timeout=10,
        )
    )
    assert wrong.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert not (await whoami(server, token)).mfa_enabled


async def test_service_accounts_cannot_enrol(server: Harness) -> None:
    token = await server.token(Role.SERVICE)
    error = await rpc_error(
        server.auth.SetupMfa(auth_pb2.SetupMfaRequest(), metadata=bearer(token), timeout=10)
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_disable_mfa_needs_a_valid_code(server: Harness) -> None:
    account = await enrolled(server)
    meta = bearer(account.access_token)
    wrong = await rpc_error(
        server.auth.DisableMfa(auth_pb2.DisableMfaRequest(code="not-a-code"), metadata=meta)
    )
    assert wrong.code() is grpc.StatusCode.INVALID_ARGUMENT
    reply = await server.auth.DisableMfa(
        auth_pb2.DisableMfaRequest(code=totp_code(server, account.secret)), metadata=meta
    )
    assert not reply.user.mfa_enabled
    assert (await server.login(account.user.username)).WhichOneof("result") == "tokens"


async def test_challenge_token_expires(server: Harness) -> None:
    account = await enrolled(server)
    token = await challenge(server, account.user.username)
    server.clock.advance(server.running.settings.mfa_challenge_ttl + timedelta(seconds=1))
    error = await rpc_error(verify(server, token, totp_code(server, account.secret)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_guessing_codes_locks_the_account_out(server: Harness) -> None:
    account = await enrolled(server)
    token = await challenge(server, account.user.username)
    good = totp_code(server, account.secret)
    wrong = _not(good)
    for _ in range(server.running.settings.login_max_failures):
        error = await rpc_error(verify(server, token, wrong))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(verify(server, token, good))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_enrolment_needs_the_password(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    token = (await server.login(user.username)).tokens.access_token
    for password in ("", "not-the-password-1"):
        error = await rpc_error(
            server.auth.SetupMfa(
                auth_pb2.SetupMfaRequest(password=password), metadata=bearer(token), timeout=10
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "password" in (error.details() or "")
    assert not (await whoami(server, token)).mfa_enabled


async def test_wrong_enrolment_passwords_count_towards_the_lockout(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    token = (await server.login(user.username)).tokens.access_token
    for n in range(server.running.settings.login_max_failures):
        await rpc_error(
            server.auth.SetupMfa(
                auth_pb2.SetupMfaRequest(password=f"guess-{n}-password"),
                metadata=bearer(token),
                timeout=10,
            )
        )
    error = await rpc_error(
        server.auth.SetupMfa(
            auth_pb2.SetupMfaRequest(password=PASSWORD), metadata=bearer(token), timeout=10
        )
    )
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_challenge_token_works_once(server: Harness) -> None:
    account = await enrolled(server)
    token = await challenge(server, account.user.username)
    assert (await verify(server, token, totp_code(server, account.secret))).access_token
    next_step(server)
    error = await rpc_error(verify(server, token, totp_code(server, account.secret)))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    error = await rpc_error(verify(server, token, account.backup_codes[0]))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("code", [ARABIC_INDIC, FULLWIDTH, "12345\x00", "\u0663" * 40, "-- ;"])
async def test_junk_codes_are_counted_failures_not_internal(server: Harness, code: str) -> None:
    account = await enrolled(server)
    limit = server.running.settings.login_max_failures
    for _ in range(limit):
        error = await rpc_error(
            verify(server, await challenge(server, account.user.username), code)
        )
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "invalid code"
    right = totp_code(server, account.secret)
    error = await rpc_error(verify(server, await challenge(server, account.user.username), right))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_junk_codes_confirming_enrolment_are_invalid_not_internal(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    token = (await server.login(user.username)).tokens.access_token
    await server.auth.SetupMfa(
        auth_pb2.SetupMfaRequest(password=PASSWORD), metadata=bearer(token), timeout=10
    )
    error = await rpc_error(
        server.auth.ConfirmMfa(
            auth_pb2.ConfirmMfaRequest(code=FULLWIDTH), metadata=bearer(token), timeout=10
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
