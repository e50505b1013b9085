"""Callers without a token can hold only so many streams, and cannot make the service write
without bound."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hitl.v1 import auth_pb2

from hitl_grpc.config import ConfigError, Settings
from hitl_grpc.domain.values import AuditOutcome, Role
from tests.audit_support import audit_rows
from tests.decisions_support import wait_until
from tests.harness import Harness, ServerFactory
from tests.signin import retry_delay_s, rpc_error

JUNK = auth_pb2.RefreshTokenRequest(refresh_token="not-a-refresh-token")


WatchCall = grpc.aio.UnaryStreamCall[Any, Any]


def _watch(server: Harness) -> WatchCall:
    call: WatchCall = server.health.Watch(health_pb2.HealthCheckRequest(service=""))
    return call


async def _open(server: Harness) -> WatchCall:
    """A health Watch that the server has accepted (its first answer arrived)."""
    call = _watch(server)
    first: Any = await asyncio.wait_for(call.read(), 10)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    return call


async def _refused(server: Harness) -> grpc.aio.AioRpcError:
    call = _watch(server)
    error = await rpc_error(asyncio.wait_for(call.read(), 10))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    return error


async def test_public_streams_are_capped_per_client_address(make_server: ServerFactory) -> None:
    async with make_server(public_streams_per_peer=3, public_streams_max=100) as server:
        held = [await _open(server) for _ in range(3)]
        error = await _refused(server)
        assert "this address already holds 3" in (error.details() or "")
        held.pop().cancel()

        async def slot_freed() -> bool:
            call = _watch(server)
            try:
                await asyncio.wait_for(call.read(), 10)
            except grpc.aio.AioRpcError as err:
                if err.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                return False
            held.append(call)
            return True

        await wait_until(slot_freed)
        await _refused(server)
        for call in held:
            call.cancel()


async def test_public_streams_are_capped_per_server(make_server: ServerFactory) -> None:
    async with make_server(public_streams_per_peer=100, public_streams_max=2) as server:
        held = [await _open(server) for _ in range(2)]
        error = await _refused(server)
        assert "this server already holds 2" in (error.details() or "")
        # Unary health checks and signed-in work are not public streams: they still answer.
        check = await server.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        for call in held:
            call.cancel()


async def test_junk_refresh_tokens_lock_the_address_and_stop_the_writes(
    make_server: ServerFactory,
) -> None:
    async with make_server(refresh_max_failures_per_peer=5) as server:
        user = await server.create_user(Role.SERVICE)
        pair = (await server.login(user.username)).tokens
        for _ in range(5):
            error = await rpc_error(server.auth.RefreshToken(JUNK, timeout=10))
            assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        failures = await audit_rows(server, "auth.refresh")
        [locked] = await audit_rows(server, "auth.refresh.throttled")
        assert locked.outcome is AuditOutcome.DENIED and locked.target == "127.0.0.1"
        for _ in range(50):
            error = await rpc_error(server.auth.RefreshToken(JUNK, timeout=10))
            assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert 0 < retry_delay_s(error) <= 60
        # While the address is locked it is refused before anything is written.
        assert len(await audit_rows(server, "auth.refresh")) == len(failures) == 5
        assert len(await audit_rows(server, "auth.refresh.throttled")) == 1
        valid = auth_pb2.RefreshTokenRequest(refresh_token=pair.refresh_token)
        error = await rpc_error(server.auth.RefreshToken(valid, timeout=10))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        server.clock.advance(timedelta(seconds=61))
        renewed = await server.auth.RefreshToken(valid, timeout=10)
        assert renewed.tokens.access_token
        error = await rpc_error(server.auth.RefreshToken(JUNK, timeout=10))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_burst_of_junk_refresh_tokens_is_judged_only_a_bounded_number_of_times(
    make_server: ServerFactory,
) -> None:
    limit = 5
    async with make_server(refresh_max_failures_per_peer=limit) as server:
        results = await asyncio.gather(
            *(server.auth.RefreshToken(JUNK, timeout=20) for _ in range(200)),
            return_exceptions=True,
        )
        codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(codes) == 200
        assert set(codes) == {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED}
        judged = len(await audit_rows(server, "auth.refresh"))
        # At most `limit` in flight at once, and the lock lands after `limit` failures.
        assert judged == codes.count(grpc.StatusCode.UNAUTHENTICATED) < 2 * limit
        assert len(await audit_rows(server, "auth.refresh.throttled")) == 1


def test_public_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "HITL_PUBLIC_STREAMS_PER_PEER": "8",
            "HITL_PUBLIC_STREAMS_MAX": "64",
            "HITL_REFRESH_MAX_FAILURES_PER_PEER": "3",
            "HITL_REFRESH_LOCKOUT_S": "120",
        }
    )
    assert (settings.public_streams_per_peer, settings.public_streams_max) == (8, 64)
    assert settings.refresh_max_failures_per_peer == 3
    assert settings.refresh_lockout == timedelta(minutes=2)
    for variable in (
        "HITL_PUBLIC_STREAMS_PER_PEER",
        "HITL_PUBLIC_STREAMS_MAX",
        "HITL_REFRESH_MAX_FAILURES_PER_PEER",
        "HITL_REFRESH_LOCKOUT_S",
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({variable: "0"})
        assert caught.value.variable == variable
