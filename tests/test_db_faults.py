"""Network faults between server and PostgreSQL: every call ends by its deadline, UNAVAILABLE.

A loopback proxy refuses, blackholes, resets or delays the traffic while calls of every
kind are in flight; each must end by HITL_DB_TIMEOUT_S plus the documented margin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2
from hitl.v1 import access_pb2, auth_pb2, decision_pb2

from hitl_grpc.domain import errors
from hitl_grpc.domain.values import Role
from tests.decisions_support import sample_request, submit
from tests.faultproxy import Fault, FaultProxy, proxied
from tests.harness import Harness, Metadata, server_factory

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_TIMEOUT_S: Final = 1.0
# The door's margin (README, "Database faults") plus scheduling slack on a loaded 2-core box.
ALLOWED_S: Final = DB_TIMEOUT_S + 1.5
PROBE_INTERVAL_S: Final = 0.5
SERVING: Final = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


@asynccontextmanager
async def _proxied_server(
    database_url: str, **overrides: float
) -> AsyncIterator[tuple[FaultProxy, Harness]]:
    async with proxied(database_url) as (proxy, proxied_url):
        settings: dict[str, float] = {
            "db_timeout_s": DB_TIMEOUT_S,
            "db_check_interval_s": PROBE_INTERVAL_S,
            "watch_catchup_s": 0.2,
        }
        settings.update(overrides)
        async with server_factory(proxied_url)(**settings) as server:
            yield proxy, server


async def _settled(step: Callable[[], Awaitable[T]]) -> T:
    """Set-up under the short test deadline: a loaded machine may miss it once or twice."""
    for _ in range(4):
        try:
            return await step()
        except errors.Unavailable:
            pass
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
    return await step()


async def _timed(call: Callable[[], Awaitable[object]]) -> tuple[float, grpc.StatusCode]:
    start = time.monotonic()
    try:
        await call()
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
    return time.monotonic() - start, code


def _calls(
    server: Harness, service: Metadata, analyst: Metadata, known: str
) -> dict[str, Callable[[], Awaitable[object]]]:
    async def first_watch_message() -> object:
        stream = server.decisions.WatchPending(
            decision_pb2.WatchPendingRequest(), metadata=analyst, timeout=30
        )
        return await anext(aiter(stream))

    async def first_decision_message() -> object:
        stream = server.decisions.WatchDecision(
            decision_pb2.WatchDecisionRequest(analysis_id=known), metadata=analyst, timeout=30
        )
        return await anext(aiter(stream))

    # Client deadlines far beyond the database's: a hang shows as DEADLINE_EXCEEDED.
    return {
        "GetCurrentUser": lambda: server.auth.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=analyst, timeout=30
        ),
        "SubmitDecision": lambda: server.decisions.SubmitDecision(
            sample_request(), metadata=service, timeout=30
        ),
        "GetDecision": lambda: server.decisions.GetDecision(
            decision_pb2.GetDecisionRequest(analysis_id=known), metadata=analyst, timeout=30
        ),
        "ListPendingDecisions": lambda: server.decisions.ListPendingDecisions(
            decision_pb2.ListPendingDecisionsRequest(), metadata=analyst, timeout=30
        ),
        "WatchPending": first_watch_message,
        "WatchDecision": first_decision_message,
    }


@pytest.mark.parametrize("fault", [Fault.REFUSE, Fault.BLACKHOLE, Fault.RESET, Fault.LATENCY])
@pytest.mark.parametrize("backend", ["postgres"])
async def test_every_call_ends_by_the_database_deadline_under_a_fault(
    database_url: str, fault: Fault
) -> None:
    async with _proxied_server(database_url) as (proxy, server):
        service = await _settled(lambda: server.as_role(Role.SERVICE))
        analyst = await _settled(lambda: server.as_role(Role.ANALYST))
        known = (await _settled(lambda: submit(server, service))).analysis_id
        calls = _calls(server, service, analyst, known)
        # Warm the pool: the fault then meets idle pooled connections as well as new ones.
        await asyncio.gather(*(_settled(call) for call in calls.values()))
        await proxy.set_fault(fault)
        names = [name for name in calls for _ in range(3)]
        results = await asyncio.gather(*(_timed(calls[name]) for name in names))
        await proxy.set_fault(Fault.NONE)
        by_call = [
            (name, round(t, 2), code.name) for name, (t, code) in zip(names, results, strict=True)
        ]
        worst = max(t for t, _ in results)
        log.warning("fault %s: worst call %.2f s; %s", fault.value, worst, by_call)
        assert worst <= ALLOWED_S, by_call
        assert all(code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK) for _, code in results)
        if fault is not Fault.LATENCY:
            assert all(code is grpc.StatusCode.UNAVAILABLE for _, code in results), by_call
        # And the service comes back on its own.
        again = await _settled(
            lambda: server.decisions.GetDecision(
                decision_pb2.GetDecisionRequest(analysis_id=known), metadata=analyst, timeout=30
            )
        )
        assert again.decision.analysis_id == known


@pytest.mark.parametrize("backend", ["postgres"])
async def test_open_watchers_get_events_again_once_a_blackhole_ends(database_url: str) -> None:
    async with _proxied_server(database_url) as (proxy, server):
        service = await _settled(lambda: server.as_role(Role.SERVICE))
        analyst = await _settled(lambda: server.as_role(Role.ANALYST))
        stream = server.decisions.WatchPending(
            decision_pb2.WatchPendingRequest(), metadata=analyst, timeout=60
        )
        messages = aiter(stream)
        first = await asyncio.wait_for(anext(messages), 10)
        assert first.HasField("snapshot_complete")
        await proxy.set_fault(Fault.BLACKHOLE)
        hub = server.hub
        reads = hub.reads
        # The reader keeps trying (and failing) instead of hanging on one read.
        async with asyncio.timeout(3 * ALLOWED_S):
            while hub.reads < reads + 2:  # noqa: ASYNC110 - counts reads, which nothing signals
                await asyncio.sleep(0.05)
        await proxy.set_fault(Fault.NONE)
        submitted = await _settled(lambda: submit(server, service))
        async with asyncio.timeout(10):
            async for message in messages:
                if message.HasField("added"):
                    assert message.added.analysis_id == submitted.analysis_id
                    break
        stream.cancel()


@pytest.mark.parametrize("backend", ["postgres"])
async def test_the_first_call_after_a_long_outage_is_served(database_url: str) -> None:
    async with _proxied_server(database_url) as (proxy, server):
        hot = server.running.hot
        assert hot is not None
        analyst = await _settled(lambda: server.as_role(Role.ANALYST))
        await _settled(
            lambda: server.auth.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(), metadata=analyst, timeout=10
            )
        )
        await proxy.set_fault(Fault.REFUSE)
        # Calls through the outage until the pool has failed to reconnect six times: were
        # its reconnects backing off (1, 2, 4 s... apart, a replacement and a growth
        # attempt each), the next attempt would come after the next call's deadline.
        async with asyncio.timeout(30):
            while hot.reconnect_errors() < 6:
                code = (
                    await _timed(
                        lambda: server.auth.GetCurrentUser(
                            auth_pb2.GetCurrentUserRequest(), metadata=analyst, timeout=10
                        )
                    )
                )[1]
                assert code is grpc.StatusCode.UNAVAILABLE
        await proxy.set_fault(Fault.NONE)
        reply = await server.auth.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=analyst, timeout=10
        )
        assert reply.user.role == access_pb2.ROLE_ANALYST


@asynccontextmanager
async def _health_changes(server: Harness) -> AsyncIterator[asyncio.Queue[tuple[float, int]]]:
    changes: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
    stream = server.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)

    async def follow() -> None:
        async for reply in stream:
            changes.put_nowait((time.monotonic(), int(reply.status)))

    follower = asyncio.create_task(follow())
    try:
        yield changes
    finally:
        stream.cancel()
        await asyncio.gather(follower, return_exceptions=True)


@pytest.mark.parametrize("fault", [Fault.BLACKHOLE, Fault.REFUSE])
@pytest.mark.parametrize("backend", ["postgres"])
async def test_health_follows_a_fault_within_two_probe_intervals(
    database_url: str, fault: Fault
) -> None:
    async with (
        _proxied_server(database_url, db_timeout_s=5.0) as (proxy, server),
        _health_changes(server) as changes,
    ):
        monitor = server.db_monitor
        assert (await asyncio.wait_for(changes.get(), 10))[1] == SERVING
        for _ in range(2):
            await proxy.set_fault(fault)
            started = time.monotonic()
            at, status = await asyncio.wait_for(changes.get(), 30)
            assert status == NOT_SERVING
            # Two intervals, plus scheduling slack: not the 5 s database deadline.
            assert at - started <= 2 * PROBE_INTERVAL_S + 0.5, at - started
            await proxy.set_fault(Fault.NONE)
            recovered = time.monotonic()
            at, status = await asyncio.wait_for(changes.get(), 30)
            assert status == SERVING
            assert at - recovered <= 2 * PROBE_INTERVAL_S + 0.5, at - recovered
            # No late verdict from a probe of the outage flips it back afterwards.
            await monitor.wait_for_probes(monitor.probes + 3)
            assert monitor.healthy
            assert changes.empty(), "health changed again after recovery"
