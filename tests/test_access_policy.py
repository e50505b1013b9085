"""The access policy comes from the contract, and a method without one is denied."""

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from hitl.v1 import access_pb2, auth_pb2
from prometheus_client import CollectorRegistry

from hitl_grpc.auth.interceptor import AuthInterceptor
from hitl_grpc.auth.policy import load_policies, policy_for
from hitl_grpc.auth.principal import Access
from hitl_grpc.domain.values import Principal, Role, UserId
from hitl_grpc.runtime.calls import CallLayer
from hitl_grpc.runtime.observability import AccessLog, RpcMetrics
from hitl_grpc.runtime.server import CONTRACT_FILES
from tests.harness import Harness, bearer


def test_every_rpc_in_the_contract_has_an_access_option() -> None:
    methods = [
        f"/{service.full_name}/{method.name}"
        for file in CONTRACT_FILES
        for service in file.services_by_name.values()
        for method in service.methods
    ]
    table = load_policies(CONTRACT_FILES)
    assert len(methods) == 30  # 14 auth, 13 decision, 3 audit
    missing = [m for m in methods if m not in table]
    assert missing == []
    for method in methods:
        policy = table[method]
        assert policy.public or policy.roles, f"{method} allows nobody"


def test_only_sign_in_methods_are_public() -> None:
    table = load_policies(CONTRACT_FILES)
    public = sorted(m for m, p in table.items() if p.public)
    assert public == [
        "/hitl.v1.AuthService/Login",
        "/hitl.v1.AuthService/RefreshToken",
        "/hitl.v1.AuthService/VerifyMfa",
    ]


def test_unknown_method_has_no_policy_but_ops_services_do() -> None:
    table = load_policies(CONTRACT_FILES)
    assert policy_for("/hitl.v1.DecisionService/Nope", table) is None
    assert policy_for("/other.Service/Call", table) is None
    health = policy_for("/grpc.health.v1.Health/Check", table)
    assert health is not None and health.public


@pytest.fixture
async def policy_less_server() -> AsyncIterator[str]:
    """A server whose only method has no access policy."""

    async def authenticate(token: str, peer: str) -> Access:
        return Access(Principal(UserId("u1"), "someone", Role.ADMIN, "t1", peer), 60)

    async def call(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server(
        interceptors=[
            CallLayer(
                AccessLog(RpcMetrics(CollectorRegistry())),
                AuthInterceptor(load_policies(CONTRACT_FILES), authenticate, reauth_s=5),
            )
        ]
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "hitl.v1.Shadow", {"Call": grpc.unary_unary_rpc_method_handler(call)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_method_without_policy_is_denied_even_for_an_admin(policy_less_server: str) -> None:
    async with grpc.aio.insecure_channel(policy_less_server) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
        call = channel.unary_unary("/hitl.v1.Shadow/Call", None, None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(b"hi", metadata=bearer("anything"), timeout=5)
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "no access policy" in (caught.value.details() or "")


async def test_viewer_on_admin_only_rpc_is_permission_denied(server: Harness) -> None:
    meta = await server.as_role(Role.VIEWER)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.auth.CreateUser(
            auth_pb2.CreateUserRequest(
                username="mallory", password="x" * 20, role=access_pb2.ROLE_ADMIN
            ),
            metadata=meta,
            timeout=5,
        )
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_signed_in_caller_gets_its_own_profile(server: Harness) -> None:
    user = await server.create_user(Role.ANALYST)
    reply = await server.login(user.username)
    me = await server.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=bearer(reply.tokens.access_token), timeout=5
    )
    assert me.user.username == user.username
    assert me.user.role == access_pb2.ROLE_ANALYST
    assert me.user.active


async def test_unknown_method_is_unimplemented(server: Harness) -> None:
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]
    call = server.channel.unary_unary("/hitl.v1.AuthService/NoSuchMethod", None, None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"", timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
