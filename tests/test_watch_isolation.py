"""Delivery waits only on this service's writers, never on other transactions in the cluster."""

from __future__ import annotations

import psycopg
import pytest

from hitl_grpc.domain.values import Role
from tests.conftest import PG_ADMIN_URL
from tests.harness import Harness
from tests.watching import event_of, next_of, submit_request, watch_live


@pytest.mark.parametrize("backend", ["postgres"])
async def test_long_transaction_in_another_database_does_not_delay_events(
    server: Harness,
) -> None:
    analyst = await server.as_role(Role.ANALYST)
    candi = await server.as_role(Role.SERVICE)
    stream = await watch_live(server, analyst)
    # A transaction with an xid in the `postgres` database holds the cluster-wide
    # snapshot xmin back for as long as it stays open.
    async with await psycopg.AsyncConnection.connect(PG_ADMIN_URL, connect_timeout=5) as other:
        await other.execute("SELECT txid_current()")
        submitted = await server.decisions.SubmitDecision(
            submit_request("while-another-database-waits"), metadata=candi, timeout=10
        )
        reply = await next_of(stream)
        assert event_of(reply) == ("added", "while-another-database-waits", 1)
        await other.rollback()
    assert submitted.created
