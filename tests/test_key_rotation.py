"""Signing keys rotate by key id: old tokens live out their TTL while their key is listed."""

from pathlib import Path

import grpc
import jwt
import pytest
from hitl.v1 import auth_pb2

from hitl_grpc.auth.tokens import key_id
from hitl_grpc.domain.values import Role
from tests.harness import Harness, ServerFactory, bearer

OLD_KEY = "old-signing-key-" + "o" * 32
NEW_KEY = "new-signing-key-" + "n" * 32


async def _whoami(server: Harness, token: str) -> str:
    reply = await server.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=10
    )
    return reply.user.username


async def test_rotated_key_keeps_old_tokens_until_it_is_dropped(
    make_server: ServerFactory,
) -> None:
    async with make_server(jwt_secret=OLD_KEY) as before:
        user = await before.create_user(Role.ANALYST)
        old_token = (await before.login(user.username)).tokens.access_token
    assert jwt.get_unverified_header(old_token)["kid"] == key_id(OLD_KEY.encode())

    async with make_server(jwt_secret=NEW_KEY, jwt_previous_secrets=(OLD_KEY,)) as during:
        assert await _whoami(during, old_token) == user.username
        new_token = (await during.login(user.username)).tokens.access_token
        assert jwt.get_unverified_header(new_token)["kid"] == key_id(NEW_KEY.encode())

    async with make_server(jwt_secret=NEW_KEY) as after:
        assert await _whoami(after, new_token) == user.username
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _whoami(after, old_token)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_signing_key_can_come_from_a_file(make_server: ServerFactory, tmp_path: Path) -> None:
    key_file = tmp_path / "signing.key"
    key_file.write_text(NEW_KEY + "\n")
    async with make_server(jwt_secret=None, jwt_secret_file=key_file) as server:
        token = await server.token(Role.VIEWER)
        assert jwt.get_unverified_header(token)["kid"] == key_id(NEW_KEY.encode())
        assert await _whoami(server, token)
