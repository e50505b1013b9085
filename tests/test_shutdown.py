"""Shutdown: always within the grace period plus a bounded margin, and in an order that
sends watchers to another replica instead of back to the draining one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from hitl_grpc.config import Settings
from hitl_grpc.domain.values import Role
from hitl_grpc.runtime.server import SHUTDOWN_MARGIN_S, RunningServer, running_server
from tests.faultproxy import Fault, proxied
from tests.harness import Harness, ShiftedClock, bearer, stubs_for

GRACE_S: Final = 2.0
# What the test allows on top of the documented margin: process start-up of the
# interpreter is not counted, but a loaded 2-core machine schedules late.
SLACK_S: Final = 2.0
ADMIN_PASSWORD: Final = "bootstrap-password-for-the-shutdown-test"
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


async def _swallows_one_cancel(running: asyncio.Event) -> None:
    # What asyncio.wait_for on Python 3.11 can do to a task: eat one cancellation.
    running.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()
    await asyncio.Event().wait()


async def _stubborn_stoppers(running: RunningServer) -> list[Callable[[], Awaitable[None]]]:
    hub, sweeper, monitor = running.hub, running.sweeper, running.db_monitor
    started = [asyncio.Event() for _ in range(3)]
    hub._tasks.append(asyncio.create_task(_swallows_one_cancel(started[0])))
    sweeper._task = asyncio.create_task(_swallows_one_cancel(started[1]))
    monitor._task = asyncio.create_task(_swallows_one_cancel(started[2]))
    # Cancelled before its first step a task never runs its handler: let them start.
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 10)
    return [hub.close, sweeper.stop, monitor.stop]


async def test_background_tasks_stop_even_if_they_swallow_a_cancel(server: Harness) -> None:
    replaced = [server.running.sweeper._task, server.running.db_monitor._task]
    for stop in await _stubborn_stoppers(server.running):
        async with asyncio.timeout(10) as bound:
            await stop()
        # Expiry would cancel the stop itself, which the old stop() took for success.
        assert not bound.expired()
    for task in replaced:
        assert task is not None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def _served_in_process(
    settings: Settings,
) -> AsyncIterator[tuple[RunningServer, asyncio.Event, asyncio.Task[None]]]:
    stop = asyncio.Event()
    started: asyncio.Future[RunningServer] = asyncio.get_running_loop().create_future()

    async def serve() -> None:
        async with running_server(settings, clock=ShiftedClock()) as running:
            started.set_result(running)
            await stop.wait()

    task = asyncio.create_task(serve())
    try:
        running = await asyncio.wait_for(asyncio.shield(started), 30)
        yield running, stop, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _not_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=""), timeout=60
    )
    async with asyncio.timeout(30):
        async for reply in health:
            if reply.status == NOT_SERVING:
                break
    health.cancel()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_watcher_cut_by_the_drain_is_refused_when_it_reconnects(
    database_url: str,
) -> None:
    async with proxied(database_url) as (proxy, proxied_url):
        settings = Settings.for_tests(
            proxied_url,
            shutdown_grace_s=10.0,
            db_timeout_s=1.0,
            db_check_interval_s=0.2,
            watch_catchup_s=0.2,
        )
        async with (
            _served_in_process(settings) as (running, stop, served),
            grpc.aio.insecure_channel(running.address) as channel,
        ):
            harness = stubs_for(running, ShiftedClock(), channel)
            analyst = bearer(await harness.token(Role.ANALYST))
            request = decision_pb2.WatchPendingRequest()
            stream = harness.decisions.WatchPending(request, metadata=analyst, timeout=60)
            first = await asyncio.wait_for(anext(aiter(stream)), 10)
            assert first.HasField("snapshot_complete")
            # The event reader is now stuck on the database: a slow part of the drain.
            await proxy.set_fault(Fault.BLACKHOLE)
            await _not_serving(channel)
            stop.set()
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await asyncio.wait_for(anext(aiter(stream)), 10)
            assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
            # At once, on the same channel: the draining server must not take it back.
            again = harness.decisions.WatchPending(request, metadata=analyst, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await asyncio.wait_for(anext(aiter(again)), 10)
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            # Refused by the transport, not answered by this server's watch handler.
            details = refused.value.details() or ""
            assert "shutting down" not in details
            assert "database" not in details
            # Nothing left in flight: the drain ends long before the grace period.
            await asyncio.wait_for(served, settings.shutdown_grace_s)


def _serve_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
    env.update(
        {
            "PYTHONFAULTHANDLER": "1",
            "HITL_DATABASE_URL": database_url,
            "HITL_LISTEN": "127.0.0.1:0",
            "HITL_METRICS_LISTEN": "off",
            "HITL_JWT_SECRET": "shutdown-test-signing-key-" + "k" * 32,
            "HITL_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "HITL_PASSWORD_MEMORY_KIB": "1024",
            "HITL_PASSWORD_TIME_COST": "1",
            "HITL_SHUTDOWN_GRACE_S": str(GRACE_S),
            "HITL_DB_TIMEOUT_S": "2",
            "HITL_DB_CHECK_INTERVAL_S": "0.2",
            "HITL_WATCH_CATCHUP_S": "0.2",
            **extra,
        }
    )
    return env


async def _address(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert raw, f"serve exited early with {await proc.wait()}"
        line = raw.decode().strip()
        if line.startswith("hitl-grpc serving on "):
            return line.rsplit(" ", 1)[-1]


async def _open_watch(stub: decision_pb2_grpc.DecisionServiceStub, token: str) -> Any:
    stream: Any = stub.WatchPending(
        decision_pb2.WatchPendingRequest(), metadata=bearer(token), timeout=120
    )
    first = await asyncio.wait_for(anext(aiter(stream)), 10)
    assert first.HasField("snapshot_complete")
    return stream


async def _until_cut(stream: Any) -> grpc.StatusCode:
    try:
        async for _ in stream:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("backend", ["postgres"])
async def test_sigterm_exits_within_the_grace_period_with_a_blackholed_database(
    database_url: str, tmp_path: Path
) -> None:
    async with proxied(database_url) as (proxy, proxied_url):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "hitl_grpc.cli",
            "serve",
            cwd=tmp_path,
            env=_serve_env(proxied_url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            address = await _address(proc)
            async with grpc.aio.insecure_channel(address) as channel:
                auth = auth_pb2_grpc.AuthServiceStub(channel)
                login = await auth.Login(
                    auth_pb2.LoginRequest(username="admin", password=ADMIN_PASSWORD), timeout=10
                )
                token = login.tokens.access_token
                decisions = decision_pb2_grpc.DecisionServiceStub(channel)
                streams = [await _open_watch(decisions, token) for _ in range(5)]
                watchers = [asyncio.create_task(_until_cut(stream)) for stream in streams]
                await proxy.set_fault(Fault.BLACKHOLE)
                # Health going down shows the fault has reached the reader and the pool.
                await _not_serving(channel)
                in_flight: asyncio.Future[Any] = asyncio.ensure_future(
                    auth.GetCurrentUser(
                        auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=60
                    )
                )
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                bound = GRACE_S + SHUTDOWN_MARGIN_S + SLACK_S
                try:
                    code = await asyncio.wait_for(proc.wait(), bound)
                except TimeoutError:
                    proc.kill()
                    _, err = await proc.communicate()
                    pytest.fail(f"serve still running {bound} s after SIGTERM:\n{err.decode()}")
                took = time.monotonic() - started
                ends = await asyncio.gather(*watchers)
                await asyncio.gather(in_flight, return_exceptions=True)
            assert code == 0, (await proc.stderr.read()).decode() if proc.stderr else code
            assert took <= bound
            assert all(end is grpc.StatusCode.UNAVAILABLE for end in ends), ends
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
