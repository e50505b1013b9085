"""Only a well-formed, unexpired access token signed with our key for our audience gets in."""

import base64
import json
import time
from datetime import timedelta

import grpc
import jwt
import pytest
from hitl.v1 import auth_pb2

from hitl_grpc.auth.tokens import key_id
from hitl_grpc.domain.values import Role
from tests.harness import Harness, Metadata, bearer


def _b64(data: dict[str, object]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def _whoami_code(server: Harness, metadata: Metadata) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.auth.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=metadata, timeout=5
        )
    return caught.value.code()


async def _whoami(server: Harness, token: str) -> None:
    await server.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=5
    )


def _claims_of(token: str) -> dict[str, object]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def _forged(server: Harness, **changes: object) -> tuple[str, str]:
    """A real token's claims, re-signed with our key after changes; and the original."""
    token = await server.token(Role.ANALYST)
    claims = {**_claims_of(token), **changes}
    secret = server.running.settings.jwt_secret
    assert secret is not None
    kid = key_id(secret.encode())
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid}), token


async def test_missing_token_is_unauthenticated(server: Harness) -> None:
    assert await _whoami_code(server, ()) is grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    "value",
    ["Bearer", "Bearer ", "Bearer not-a-jwt", "Basic dXNlcjpwdw==", "token-without-scheme"],
)
async def test_malformed_authorization_is_unauthenticated(server: Harness, value: str) -> None:
    code = await _whoami_code(server, (("authorization", value),))
    assert code is grpc.StatusCode.UNAUTHENTICATED


async def test_valid_token_gets_in(server: Harness) -> None:
    token = await server.token(Role.VIEWER)
    me = await server.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=5
    )
    assert me.user.role == Role.VIEWER.value


async def test_expired_token_is_unauthenticated(server: Harness) -> None:
    token = await server.token(Role.ANALYST)
    server.clock.advance(server.running.settings.access_token_ttl + timedelta(seconds=1))
    assert await _whoami_code(server, bearer(token)) is grpc.StatusCode.UNAUTHENTICATED


async def test_a_token_let_in_before_is_refused_once_it_expires(server: Harness) -> None:
    token = await server.token(Role.ANALYST)
    await _whoami(server, token)
    server.clock.advance(server.running.settings.access_token_ttl + timedelta(seconds=1))
    assert await _whoami_code(server, bearer(token)) is grpc.StatusCode.UNAUTHENTICATED


async def test_a_token_altered_after_it_got_in_is_refused(server: Harness) -> None:
    token = await server.token(Role.ANALYST)
    await _whoami(server, token)
    head, body, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    for altered in (f"{head}.{body}.{flipped}", f"{head}.{body}x.{signature}"):
        assert await _whoami_code(server, bearer(altered)) is grpc.StatusCode.UNAUTHENTICATED


async def test_token_signed_with_another_key_is_unauthenticated(server: Harness) -> None:
    token = await server.token(Role.ANALYST)
    header = jwt.get_unverified_header(token)
    other = jwt.encode(
        _claims_of(token), "another-key-" + "z" * 40, algorithm="HS256", headers=header
    )
    assert await _whoami_code(server, bearer(other)) is grpc.StatusCode.UNAUTHENTICATED


async def test_alg_none_token_is_unauthenticated(server: Harness) -> None:
    token = await server.token(Role.ADMIN)
    kid = jwt.get_unverified_header(token)["kid"]
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{_b64(_claims_of(token))}."
    assert await _whoami_code(server, bearer(unsigned)) is grpc.StatusCode.UNAUTHENTICATED


async def test_token_for_another_audience_is_unauthenticated(server: Harness) -> None:
    forged, original = await _forged(server, aud="some-other-service")
    assert await _whoami_code(server, bearer(forged)) is grpc.StatusCode.UNAUTHENTICATED
    # The same claims with our audience pass, so the audience is what was refused.
    await server.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=bearer(original), timeout=5
    )


async def test_token_from_another_issuer_is_unauthenticated(server: Harness) -> None:
    forged, _ = await _forged(server, iss="someone-else")
    assert await _whoami_code(server, bearer(forged)) is grpc.StatusCode.UNAUTHENTICATED


async def test_token_of_another_type_is_unauthenticated(server: Harness) -> None:
    forged, _ = await _forged(server, typ="refresh")
    assert await _whoami_code(server, bearer(forged)) is grpc.StatusCode.UNAUTHENTICATED


async def test_token_with_unknown_key_id_is_unauthenticated(server: Harness) -> None:
    token = await server.token(Role.ANALYST)
    secret = server.running.settings.jwt_secret
    assert secret is not None
    other = jwt.encode(_claims_of(token), secret, algorithm="HS256", headers={"kid": "nope"})
    assert await _whoami_code(server, bearer(other)) is grpc.StatusCode.UNAUTHENTICATED


async def test_token_without_expiry_is_unauthenticated(server: Harness) -> None:
    token = await server.token(Role.ANALYST)
    claims = _claims_of(token)
    del claims["exp"]
    secret = server.running.settings.jwt_secret
    assert secret is not None
    other = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_id(secret.encode())})
    assert await _whoami_code(server, bearer(other)) is grpc.StatusCode.UNAUTHENTICATED


async def test_token_for_a_user_that_does_not_exist_is_unauthenticated(server: Harness) -> None:
    forged, _ = await _forged(server, sub="00000000-0000-0000-0000-000000000000")
    assert await _whoami_code(server, bearer(forged)) is grpc.StatusCode.UNAUTHENTICATED


async def test_wrong_password_and_unknown_user_look_the_same(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    failures = []
    for username, password in [
        (user.username, "wrong-password-123"),
        ("nobody-here", "whatever-123"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.login(username, password)
        failures.append((caught.value.code(), caught.value.details()))
    assert failures[0] == failures[1]
    assert failures[0][0] is grpc.StatusCode.UNAUTHENTICATED


async def test_login_returns_token_pair_with_expiries(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    before = int(time.time())
    reply = await server.login(user.username)
    assert reply.WhichOneof("result") == "tokens"
    pair = reply.tokens
    assert pair.access_token and pair.refresh_token and pair.access_token != pair.refresh_token
    ttl = server.running.settings.access_token_ttl.total_seconds()
    assert before + ttl - 5 <= pair.access_expires_at.seconds <= before + ttl + 5
    assert pair.refresh_expires_at.seconds > pair.access_expires_at.seconds
    claims = _claims_of(pair.access_token)
    assert {"sub", "role", "jti", "iat", "exp", "iss", "aud", "typ"} <= set(claims)
    assert claims["role"] == "analyst" and claims["typ"] == "access"
    assert jwt.get_unverified_header(pair.access_token)["alg"] == "HS256"
