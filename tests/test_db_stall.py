"""A database that silently stops answering: UNAVAILABLE within the deadline, never a hang."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hitl.v1 import auth_pb2
from sqlalchemy.engine import make_url

from hitl_grpc.domain.values import Role
from tests.decisions_support import wait_until
from tests.harness import Harness, bearer, server_factory


class SilentProxy:
    """A loopback TCP proxy in front of PostgreSQL that can drop every byte, both ways."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.dropping = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await src.read(65536):
                if not self.dropping:
                    dst.write(data)
                    await dst.drain()
        dst.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[int]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)


SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(server: Harness) -> int:
    reply = await server.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(reply.status)


@pytest.mark.parametrize("backend", ["postgres"])
async def test_silent_database_is_unavailable_then_recovers(database_url: str) -> None:
    url = make_url(database_url)
    proxy = SilentProxy(url.host or "127.0.0.1", url.port or 5432)
    async with proxy.running() as port:
        proxied = url.set(port=port).render_as_string(hide_password=False)
        start = server_factory(proxied)
        async with start(db_timeout_s=1.0, db_check_interval_s=0.1) as server:
            token = await server.token(Role.ANALYST)
            request = auth_pb2.GetCurrentUserRequest()
            proxy.dropping = True
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                # Far longer than db_timeout_s: a hang would surface as DEADLINE_EXCEEDED.
                await server.auth.GetCurrentUser(request, metadata=bearer(token), timeout=30)
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

            async def not_serving() -> bool:
                return await _health(server) == NOT_SERVING

            await wait_until(not_serving)
            proxy.dropping = False

            async def serving() -> bool:
                return await _health(server) == SERVING

            await wait_until(serving)
            me = await server.auth.GetCurrentUser(request, metadata=bearer(token), timeout=30)
            assert me.user.role == Role.ANALYST.value
