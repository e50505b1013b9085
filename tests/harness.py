"""What a test needs to talk to its own server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2_grpc
from hitl.v1 import audit_pb2_grpc, auth_pb2, auth_pb2_grpc, decision_pb2_grpc

from hitl_grpc.accounts.users import NewUser
from hitl_grpc.config import Settings
from hitl_grpc.domain.clock import ShiftedClock
from hitl_grpc.domain.values import Role, User
from hitl_grpc.runtime.server import RunningServer, running_server

PASSWORD = "a-long-test-password-42"
Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    """Call metadata carrying an access token."""
    return (("authorization", f"Bearer {token}"),)


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
            running_server(settings, clock=clock) as running,
            grpc.aio.insecure_channel(running.address) as channel,
        ):
            yield stubs_for(running, clock, channel)

    return start
