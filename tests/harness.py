"""What a test needs to talk to its own server, and to observe its background parts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from hitl.v1 import audit_pb2_grpc, auth_pb2, auth_pb2_grpc, decision_pb2_grpc

from hitl_grpc.accounts.users import NewUser
from hitl_grpc.config import Settings
from hitl_grpc.domain.values import Role, User
from hitl_grpc.events.hub import EventHub
from hitl_grpc.runtime.db_probe import DatabaseMonitor
from hitl_grpc.runtime.server import RunningServer, running_server

PASSWORD = "a-long-test-password-42"
Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    """Call metadata carrying an access token."""
    return (("authorization", f"Bearer {token}"),)


class ShiftedClock:
    """The wall clock moved by an adjustable offset: time still flows, tests jump it."""

    def __init__(self) -> None:
        self._offset = timedelta(0)

    def now(self) -> datetime:
        """The current UTC time plus the offset."""
        return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        """Moves the clock forward."""
        self._offset += delta


class ObservedHub(EventHub):
    """The event reader, counting its reads of the log so that a test can wait for one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads = 0
        self._reads_started = 0
        self._read_done = asyncio.Condition()

    async def _read_once(self) -> None:
        self._reads_started += 1
        try:
            await super()._read_once()
        finally:
            async with self._read_done:
                self.reads += 1
                self._read_done.notify_all()

    async def sync(self) -> None:
        """Waits for a read of the log that started after this call."""
        target = self._reads_started + 1
        self.wake()
        async with self._read_done:
            await self._read_done.wait_for(lambda: self.reads >= target)


class ObservedMonitor(DatabaseMonitor):
    """The database probe, counting its probes so that a test can wait for some."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probes = 0
        self._probed = asyncio.Condition()

    async def step(self) -> None:
        await super().step()
        async with self._probed:
            self.probes += 1
            self._probed.notify_all()

    async def wait_for_probes(self, count: int) -> None:
        """Returns once `count` probes have finished since the start."""
        async with self._probed:
            await self._probed.wait_for(lambda: self.probes >= count)


@dataclass
class Harness:
    """One in-process server, a channel to it, and stubs for every service."""

    running: RunningServer
    clock: ShiftedClock
    channel: grpc.aio.Channel
    auth: auth_pb2_grpc.AuthServiceAsyncStub
    decisions: decision_pb2_grpc.DecisionServiceAsyncStub
    audit: audit_pb2_grpc.AuditServiceAsyncStub
    health: health_pb2_grpc.HealthStub

    @property
    def hub(self) -> ObservedHub:
        """The server's event reader, observed."""
        hub = self.running.hub
        assert isinstance(hub, ObservedHub), "a server the harness started"
        return hub

    @property
    def db_monitor(self) -> ObservedMonitor:
        """The server's database probe, observed."""
        monitor = self.running.db_monitor
        assert isinstance(monitor, ObservedMonitor), "a server the harness started"
        return monitor

    async def create_user(
        self, role: Role, username: str | None = None, password: str = PASSWORD
    ) -> User:
        """A new active account, created directly through the account operations."""
        name = username or f"{role.name.lower()}-{uuid.uuid4().hex[:8]}"
        return await self.running.accounts.users.create(
            NewUser(username=name, password=password, role=role), actor="test", peer="test"
        )

    async def login(self, username: str, password: str = PASSWORD) -> auth_pb2.LoginResponse:
        """Login over the wire."""
        return await self.auth.Login(
            auth_pb2.LoginRequest(username=username, password=password), timeout=10
        )

    async def token(self, role: Role, username: str | None = None) -> str:
        """An access token for a new account with this role, obtained over the wire."""
        user = await self.create_user(role, username)
        reply = await self.login(user.username)
        return reply.tokens.access_token

    async def as_role(self, role: Role) -> Metadata:
        """Call metadata for a new account with this role."""
        return bearer(await self.token(role))


def stubs_for(running: RunningServer, clock: ShiftedClock, channel: grpc.aio.Channel) -> Harness:
    """A harness over an open channel."""
    return Harness(
        running=running,
        clock=clock,
        channel=channel,
        auth=auth_pb2_grpc.AuthServiceStub(channel),
        decisions=decision_pb2_grpc.DecisionServiceStub(channel),
        audit=audit_pb2_grpc.AuditServiceStub(channel),
        health=health_pb2_grpc.HealthStub(channel),
    )


ServerFactory = Callable[..., AbstractAsyncContextManager[Harness]]


def server_factory(database_url: str) -> ServerFactory:
    """Starts servers on the test's database, with settings overrides."""

    @asynccontextmanager
    async def start(
        *, clock: ShiftedClock | None = None, **overrides: Any
    ) -> AsyncIterator[Harness]:
        clock = clock or ShiftedClock()
        settings = Settings.for_tests(database_url, **overrides)
        async with (
            running_server(
                settings, clock=clock, hub_class=ObservedHub, monitor_class=ObservedMonitor
            ) as running,
            grpc.aio.insecure_channel(running.address) as channel,
        ):
            yield stubs_for(running, clock, channel)

    return start
