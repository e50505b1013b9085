"""Shared builders for the decision lifecycle tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hitl.v1 import decision_pb2
from sqlalchemy import text

from tests.harness import Harness, Metadata

# Re-exported: the lifecycle tests build their samples from here.
from tests.samples import sample_request as sample_request
from tests.samples import ts as ts


async def submit(
    server: Harness, metadata: Metadata, analysis_id: str | None = None, **fields: Any
) -> decision_pb2.Decision:
    """Submits a sample and returns the stored decision."""
    reply = await server.decisions.SubmitDecision(
        sample_request(analysis_id, **fields), metadata=metadata, timeout=10
    )
    return reply.decision


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The google.rpc.BadRequest field violations of an INVALID_ARGUMENT error."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, "no rich status details"
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            for v in bad.field_violations:
                found[v.field] = v.description
    return found


async def scalar(server: Harness, sql: str, **params: Any) -> Any:
    """One value read straight from the test's database."""
    async with server.running.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


async def statuses(server: Harness, ids: Sequence[str]) -> dict[str, int]:
    """The stored status of each decision."""
    async with server.running.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT analysis_id, status FROM decisions"))).all()
    wanted = set(ids)
    return {r[0]: r[1] for r in rows if r[0] in wanted}


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0) -> None:
    """Returns once `check` holds; fails the test if it doesn't within the deadline."""
    async with asyncio.timeout(timeout_s):
        # Polls stored state, which nothing signals; the deadline bounds it.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def database_now(server: Harness) -> datetime:
    """The database's own clock, read apart from the code under test."""
    async with server.running.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            value = (await conn.execute(text("SELECT clock_timestamp()"))).scalar_one()
        else:
            raw = (
                await conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
            ).scalar_one()
            value = datetime.fromisoformat(raw).replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


async def wait_for_database_time(
    server: Harness, moment: datetime, *, timeout_s: float = 20.0
) -> None:
    """Returns once the database's clock has passed `moment`."""

    async def passed() -> bool:
        return await database_now(server) > moment

    await wait_until(passed, timeout_s=timeout_s)


def when(value: Timestamp) -> datetime:
    """A Timestamp as an aware UTC datetime."""
    return value.ToDatetime(tzinfo=UTC)
