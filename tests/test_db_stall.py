"""A database that silently stops answering: UNAVAILABLE within the deadline, never a hang."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hitl.v1 import auth_pb2

from hitl_grpc.domain.values import Role
from tests.decisions_support import wait_until
from tests.faultproxy import Fault, proxied
from tests.harness import Harness, bearer, server_factory

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(server: Harness) -> int:
    reply = await server.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(reply.status)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_silent_database_is_unavailable_then_recovers(database_url: str) -> None:
    async with proxied(database_url) as (proxy, proxied_url):
        start = server_factory(proxied_url)
        async with start(db_timeout_s=1.0, db_check_interval_s=0.1) as server:
            token = await server.token(Role.ANALYST)
            request = auth_pb2.GetCurrentUserRequest()
            await proxy.set_fault(Fault.BLACKHOLE)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                # Far longer than db_timeout_s: a hang would surface as DEADLINE_EXCEEDED.
                await server.auth.GetCurrentUser(request, metadata=bearer(token), timeout=30)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

            async def not_serving() -> bool:
                return await _health(server) == NOT_SERVING

            await wait_until(not_serving)
            await proxy.set_fault(Fault.NONE)

            async def serving() -> bool:
                return await _health(server) == SERVING

            await wait_until(serving)
            me = await server.auth.GetCurrentUser(request, metadata=bearer(token), timeout=30)
            assert me.user.role == Role.ANALYST.value
