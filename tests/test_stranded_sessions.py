"""A transaction of ours cut off from its replica is ended by PostgreSQL itself, in bounded time."""

from __future__ import annotations

import asyncio
import time
from typing import Final

import psycopg
import pytest
from sqlalchemy import text

from hitl_grpc.domain import errors
from hitl_grpc.domain.values import Role
from hitl_grpc.store.engine import IDLE_IN_TRANSACTION_MARGIN_S, server_session_limits
from tests.conftest import PG_ADMIN_URL
from tests.decisions_support import submit, wait_until
from tests.faultproxy import Fault, proxied
from tests.harness import server_factory

DB_TIMEOUT_S: Final = 1.0
SLACK_S: Final = 3.0


@pytest.mark.parametrize("backend", ["postgres"])
async def test_every_session_carries_the_server_side_bounds(database_url: str) -> None:
    async with (
        server_factory(database_url)(db_timeout_s=DB_TIMEOUT_S) as server,
        server.running.uow(readonly=True) as unit,
    ):
        shown = {
            name: (await unit.connection.execute(text(f"SHOW {name}"))).scalar_one()
            for name in server_session_limits(DB_TIMEOUT_S)
        }
    assert shown == {
        "statement_timeout": "1s",
        "idle_in_transaction_session_timeout": "2s",
        "client_connection_check_interval": "500ms",
        "tcp_keepalives_idle": "1",
        "tcp_keepalives_interval": "1",
        "tcp_keepalives_count": "3",
    }


@pytest.mark.parametrize("backend", ["postgres"])
async def test_a_stranded_writer_releases_its_locks_within_the_documented_bound(
    database_url: str,
) -> None:
    async with (
        proxied(database_url) as (proxy, proxied_url),
        server_factory(proxied_url)(db_timeout_s=DB_TIMEOUT_S) as server,
    ):
        service = await server.as_role(Role.SERVICE)
        decision = await submit(server, service)
        locked = asyncio.Event()

        async def strand() -> None:
            async with server.running.uow() as unit:
                await unit.connection.execute(
                    text("SELECT 1 FROM decisions WHERE analysis_id = :id FOR UPDATE"),
                    {"id": decision.analysis_id},
                )
                locked.set()
                # The replica is cut off here: its COMMIT never reaches the server.
                await asyncio.Event().wait()

        writer = asyncio.create_task(strand())
        await asyncio.wait_for(locked.wait(), 10)
        await proxy.set_fault(Fault.BLACKHOLE)
        cut_at = time.monotonic()
        with pytest.raises(errors.Unavailable):
            await writer
        async with await psycopg.AsyncConnection.connect(
            database_url, autocommit=True, connect_timeout=5
        ) as peer:

            async def lock_is_free() -> bool:
                try:
                    async with peer.transaction():
                        await peer.execute(
                            "SELECT 1 FROM decisions WHERE analysis_id = %s FOR UPDATE NOWAIT",
                            (decision.analysis_id,),
                        )
                except psycopg.errors.LockNotAvailable:
                    return False
                return True

            await wait_until(lock_is_free, timeout_s=30)
        held_s = time.monotonic() - cut_at
        # The session sat idle in its transaction; PostgreSQL ended it by itself.
        assert held_s <= DB_TIMEOUT_S + IDLE_IN_TRANSACTION_MARGIN_S + SLACK_S, held_s
        async with await psycopg.AsyncConnection.connect(
            PG_ADMIN_URL, autocommit=True, connect_timeout=5
        ) as admin:
            cur = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND state LIKE 'idle in transaction%%'",
                (database_url.rsplit("/", 1)[1],),
            )
            assert await cur.fetchone() == (0,)
        await proxy.set_fault(Fault.NONE)
