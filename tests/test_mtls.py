"""Service accounts bound to client certificates: verified by TLS, checked on every call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc, decision_pb2_grpc

from hitl_grpc.accounts.users import NewUser, UserUpdate
from hitl_grpc.config import ConfigError, Settings
from hitl_grpc.domain.values import Role
from tests.certificates import Authority, Issued
from tests.decisions_support import sample_request
from tests.harness import PASSWORD, Harness, ServerFactory, bearer

SUBJECT = "CN=candi,O=SOC"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path)


@asynccontextmanager
async def _channel(
    authority: Authority, port: int, client: Issued | None
) -> AsyncIterator[grpc.aio.Channel]:
    key, chain = client.pair() if client else (None, None)
    creds = grpc.ssl_channel_credentials(authority.ca.read_bytes(), key, chain)
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as channel:
        yield channel


def _tls(authority: Authority, **overrides: object) -> dict[str, object]:
    server = authority.server()
    return {
        "tls_cert_file": server.cert,
        "tls_key_file": server.key,
        "tls_client_ca_file": authority.ca,
        **overrides,
    }


async def _bind_candi(harness: Harness, subject: str = SUBJECT) -> None:
    await harness.running.accounts.users.create(
        NewUser(username="candi", password="", role=Role.SERVICE, certificate_subject=subject),
        actor="test",
        peer="test",
    )


async def _token(harness: Harness, authority: Authority, role: Role, username: str) -> str:
    """Signs a new account in on the main listener, which asks no client certificate."""
    await harness.create_user(role, username)
    async with _channel(authority, harness.running.port, None) as channel:
        reply = await auth_pb2_grpc.AuthServiceStub(channel).Login(
            auth_pb2.LoginRequest(username=username, password=PASSWORD), timeout=10
        )
    return reply.tokens.access_token


async def _me(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> str:
    reply = await auth_pb2_grpc.AuthServiceStub(channel).GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=metadata, timeout=10
    )
    return reply.user.username


async def _refused(authority: Authority, port: int, client: Issued | None) -> grpc.aio.AioRpcError:
    """The error GetCurrentUser gets on a fresh channel presenting `client` (no token)."""
    async with _channel(authority, port, client) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _me(channel)
    return caught.value


async def test_a_bound_service_account_submits_with_its_certificate_alone(
    make_server: ServerFactory, authority: Authority
) -> None:
    async with make_server(**_tls(authority)) as harness:
        await _bind_candi(harness)
        async with _channel(authority, harness.running.port, authority.client("candi")) as channel:
            assert await _me(channel) == "candi"
            reply = await decision_pb2_grpc.DecisionServiceStub(channel).SubmitDecision(
                sample_request(), timeout=10
            )
        assert reply.created and reply.decision.submitted_by == "candi"


async def test_each_call_rereads_the_binding_deactivation_and_unbinding_take_effect_at_once(
    make_server: ServerFactory, authority: Authority
) -> None:
    async with make_server(**_tls(authority)) as harness:
        await _bind_candi(harness)
        users = harness.running.accounts.users
        candi = await users.find("candi")
        async with _channel(authority, harness.running.port, authority.client("candi")) as channel:
            assert await _me(channel) == "candi"
            await users.update(candi.id, UserUpdate(active=False), actor="test", peer="test")
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await _me(channel)
            assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert denied.value.details() == "account is deactivated"
            await users.update(
                candi.id, UserUpdate(active=True, certificate_subject=""), actor="t", peer="t"
            )
            with pytest.raises(grpc.aio.AioRpcError) as unbound:
                await _me(channel)
        assert unbound.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert unbound.value.details() == f"no account is bound to certificate subject {SUBJECT!r}"


async def test_an_unbound_or_foreign_certificate_and_none_at_all_get_nothing(
    make_server: ServerFactory, authority: Authority, tmp_path: Path
) -> None:
    foreign = Authority(tmp_path, name="another CA")
    async with make_server(**_tls(authority)) as harness:
        await _bind_candi(harness)
        port = harness.running.port
        unbound = await _refused(authority, port, authority.client("stranger"))
        assert unbound.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "CN=stranger,O=SOC" in (unbound.details() or "")
        # Same subject, another issuer: the handshake itself fails.
        forged = await _refused(authority, port, foreign.client("candi"))
        assert forged.code() is grpc.StatusCode.UNAVAILABLE
        missing = await _refused(authority, port, None)
        assert missing.code() is grpc.StatusCode.UNAVAILABLE


async def test_a_token_on_the_certificate_listener_speaks_for_its_own_user(
    make_server: ServerFactory, authority: Authority
) -> None:
    async with make_server(**_tls(authority, mtls_listen="127.0.0.1:0")) as harness:
        await _bind_candi(harness)
        assert harness.running.mtls_port not in (None, harness.running.port)
        assert harness.running.mtls_port is not None
        analyst = await _token(harness, authority, Role.ANALYST, "ana")
        # The main listener asks no certificate: people sign in there with passwords.
        async with _channel(authority, harness.running.port, None) as channel:
            assert await _me(channel, bearer(analyst)) == "ana"
        certificate = authority.client("candi")
        async with _channel(authority, harness.running.mtls_port, certificate) as channel:
            assert await _me(channel) == "candi"
            assert await _me(channel, bearer(analyst)) == "ana"
            with pytest.raises(grpc.aio.AioRpcError) as logout:
                await auth_pb2_grpc.AuthServiceStub(channel).Logout(
                    auth_pb2.LogoutRequest(), timeout=10
                )
        assert logout.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        # The main listener never reads a certificate: no token there is no caller.
        anonymous = await _refused(authority, harness.running.port, certificate)
        assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_admins_bind_only_service_accounts_one_subject_each_over_the_wire(
    make_server: ServerFactory, authority: Authority
) -> None:
    async with make_server(**_tls(authority, mtls_listen="127.0.0.1:0")) as harness:
        admin = bearer(await _token(harness, authority, Role.ADMIN, "root"))
        async with _channel(authority, harness.running.port, None) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            created = await stub.CreateUser(
                auth_pb2.CreateUserRequest(
                    username="candi",
                    role=access_pb2.ROLE_SERVICE,
                    certificate_subject=" CN=candi,O=SOC ",
                ),
                metadata=admin,
                timeout=10,
            )
            assert created.user.certificate_subject == SUBJECT
            with pytest.raises(grpc.aio.AioRpcError) as taken:
                await stub.CreateUser(
                    auth_pb2.CreateUserRequest(
                        username="candi2", role=access_pb2.ROLE_SERVICE, certificate_subject=SUBJECT
                    ),
                    metadata=admin,
                    timeout=10,
                )
            assert taken.value.code() is grpc.StatusCode.ALREADY_EXISTS
            assert taken.value.details() == "another account is bound to that certificate subject"
            with pytest.raises(grpc.aio.AioRpcError) as analyst:
                await stub.CreateUser(
                    auth_pb2.CreateUserRequest(
                        username="ana",
                        password="a long enough password",
                        role=access_pb2.ROLE_ANALYST,
                        certificate_subject="CN=ana",
                    ),
                    metadata=admin,
                    timeout=10,
                )
            assert analyst.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as promoted:
                await stub.UpdateUser(
                    auth_pb2.UpdateUserRequest(
                        user_id=created.user.id,
                        role=access_pb2.ROLE_ADMIN,
                        update_mask=field_mask_pb2.FieldMask(paths=["role"]),
                    ),
                    metadata=admin,
                    timeout=10,
                )
            assert promoted.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            # The certificate-only account has no password anybody knows.
            with pytest.raises(grpc.aio.AioRpcError) as login:
                await stub.Login(auth_pb2.LoginRequest(username="candi", password=""), timeout=10)
            assert login.value.code() is grpc.StatusCode.UNAUTHENTICATED
        async with _channel(
            authority, harness.running.mtls_port or 0, authority.client("candi")
        ) as channel:
            assert await _me(channel) == "candi"


def test_client_certificates_need_tls_and_their_listener_needs_a_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    with pytest.raises(ConfigError) as no_tls:
        Settings.from_env({"HITL_TLS_CLIENT_CA_FILE": str(ca)})
    assert no_tls.value.variable == "HITL_TLS_CLIENT_CA_FILE"
    with pytest.raises(ConfigError) as no_ca:
        Settings.from_env({"HITL_MTLS_LISTEN": "127.0.0.1:0"})
    assert no_ca.value.variable == "HITL_MTLS_LISTEN"
