"""The tamper-evident audit: request ids, the hash chain, verify, and the SIEM export."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from alembic import command
from alembic.config import Config
from hitl.v1 import audit_pb2, auth_pb2
from sqlalchemy import Connection, text

from hitl_grpc.config import Settings
from hitl_grpc.domain import opaque
from hitl_grpc.domain.values import Priority, Role
from hitl_grpc.store import audit_chain, schema
from hitl_grpc.store.engine import make_engine
from tests.audit_support import audit_rows
from tests.decisions_support import submit, wait_for_database_time, when
from tests.harness import PASSWORD, Harness, ServerFactory, bearer

SHORT = timedelta(seconds=2)


async def _sql(server: Harness, statement: str, **params: Any) -> None:
    """A change made straight in the database, behind the service's back."""
    async with server.running.engine.begin() as conn:
        await conn.execute(text(statement), params)


async def _ids(server: Harness) -> list[int]:
    async with server.running.engine.connect() as conn:
        return list((await conn.scalars(text("SELECT id FROM audit_events ORDER BY seq"))).all())


async def _export(
    server: Harness, metadata: tuple[tuple[str, str], ...], cursor: str = ""
) -> list[audit_pb2.ExportAuditEventsResponse]:
    call = server.audit.ExportAuditEvents(
        audit_pb2.ExportAuditEventsRequest(resume_cursor=cursor), metadata=metadata, timeout=10
    )
    return [reply async for reply in call]


async def _failed_logins(server: Harness, count: int, prefix: str) -> None:
    for n in range(count):
        with pytest.raises(grpc.aio.AioRpcError):
            await server.login(f"{prefix}-{n}", "wrong")


# -- request ids -------------------------------------------------------------------------


async def test_an_audit_row_carries_the_callers_request_id(server: Harness) -> None:
    admin_user = await server.create_user(Role.ADMIN)
    reply = await server.auth.Login(
        auth_pb2.LoginRequest(username=admin_user.username, password=PASSWORD),
        metadata=(("x-request-id", "soc-ticket-4711"),),
        timeout=10,
    )
    [row] = await audit_rows(server, "auth.login", admin_user.username)
    assert row.request_id == "soc-ticket-4711"
    listed = await server.audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(kind="auth.login", target=admin_user.username),
        metadata=bearer(reply.tokens.access_token),
        timeout=10,
    )
    assert [e.request_id for e in listed.events] == ["soc-ticket-4711"]


async def test_without_a_request_id_the_row_has_the_generated_one_the_access_log_shows(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    user = await server.create_user(Role.ANALYST)
    with caplog.at_level(logging.INFO, logger="hitl_grpc.rpc"):
        await server.login(user.username)
    [line] = [r for r in caplog.records if getattr(r, "method", "") == "/hitl.v1.AuthService/Login"]
    logged: str = line.request_id  # type: ignore[attr-defined]  # a logging extra
    assert re.fullmatch(r"[0-9a-f]{32}", logged)
    [row] = await audit_rows(server, "auth.login", user.username)
    assert row.request_id == logged


async def test_rows_the_sweeper_writes_carry_one_id_per_sweep(
    make_server: ServerFactory,
) -> None:
    sla = {**Settings().sla, Priority.CRITICAL: SHORT}
    async with make_server(sweep_interval_s=3600, sla=sla) as server:
        service = await server.as_role(Role.SERVICE)
        late = [await submit(server, service, priority=Priority.CRITICAL) for _ in range(2)]
        await wait_for_database_time(server, max(when(d.sla_deadline) for d in late))
        report = await server.running.sweeper.sweep_once()
        assert report.escalated == 2
        rows = await audit_rows(server, "decision.sla_escalate")
        assert len(rows) == 2
        assert rows[0].request_id == rows[1].request_id
        assert re.fullmatch(r"sweep-[0-9a-f]{32}", rows[0].request_id)
        # Both rows were linked in one transaction (one sweep batch), one after the other.
        assert abs(rows[0].seq - rows[1].seq) == 1
        chain = await audit_chain.verify(server.running.engine)
        assert chain.ok, chain.breaks


async def test_the_bootstrap_admin_row_carries_a_start_up_id(server: Harness) -> None:
    [row] = await audit_rows(server, "user.created", "admin")
    assert row.actor == "system"
    assert re.fullmatch(r"startup-[0-9a-f]{32}", row.request_id)


# -- the chain ---------------------------------------------------------------------------


async def test_every_row_is_linked_and_verify_passes(server: Harness) -> None:
    await _failed_logins(server, 3, "nobody")
    report = await audit_chain.verify(server.running.engine)
    assert report.ok, report.breaks
    assert report.rows == len(await _ids(server)) >= 3
    async with server.running.engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT seq, prev_hash, hash FROM audit_events ORDER BY seq"))
        ).all()
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    assert rows[0].prev_hash == audit_chain.GENESIS
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(rows))


async def test_an_edited_row_is_named_by_verify(server: Harness) -> None:
    await _failed_logins(server, 4, "probe")
    ids = await _ids(server)
    edited = ids[len(ids) // 2]
    await _sql(server, "UPDATE audit_events SET actor = 'someone-else' WHERE id = :id", id=edited)
    report = await audit_chain.verify(server.running.engine)
    [broken] = report.breaks
    assert broken.row_id == edited
    assert "edited" in broken.reason


async def test_an_edit_that_recomputes_the_digest_is_still_caught(server: Harness) -> None:
    await _failed_logins(server, 3, "probe")
    ids = await _ids(server)
    await _sql(server, "UPDATE audit_events SET digest = :d WHERE id = :id", d="ab" * 32, id=ids[1])
    [broken] = (await audit_chain.verify(server.running.engine)).breaks
    assert broken.row_id == ids[1]


async def test_a_removed_row_breaks_the_chain_at_the_next_one(server: Harness) -> None:
    await _failed_logins(server, 4, "probe")
    ids = await _ids(server)
    await _sql(server, "DELETE FROM audit_events WHERE id = :id", id=ids[1])
    [broken] = (await audit_chain.verify(server.running.engine)).breaks
    assert broken.row_id == ids[2]
    assert "missing" in broken.reason


async def test_rows_cut_from_the_end_disagree_with_the_head(server: Harness) -> None:
    await _failed_logins(server, 3, "probe")
    ids = await _ids(server)
    await _sql(server, "DELETE FROM audit_events WHERE id = :id", id=ids[-1])
    [broken] = (await audit_chain.verify(server.running.engine)).breaks
    assert broken.row_id == ids[-2]
    assert "removed from the end" in broken.reason


async def test_two_servers_writing_at_once_leave_one_valid_chain(
    make_server: ServerFactory,
) -> None:
    async with make_server() as one, make_server() as two:
        service_one = await one.as_role(Role.SERVICE)
        service_two = await two.as_role(Role.SERVICE)
        before = len(await _ids(one))
        await asyncio.gather(
            *(submit(one, service_one) for _ in range(15)),
            *(submit(two, service_two) for _ in range(15)),
        )
        report = await audit_chain.verify(one.running.engine)
        assert report.ok, report.breaks
        assert report.rows == before + 30
        assert len(await audit_rows(one, "decision.submit")) == 30


# -- the export --------------------------------------------------------------------------


async def test_export_resumes_from_a_cursor_without_gaps_or_duplicates(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    service = await server.as_role(Role.SERVICE)
    for _ in range(5):
        await submit(server, service)
    first = await _export(server, admin)
    lines = [json.loads(r.json_line) for r in first]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert {"decision.submit", "auth.login"} <= {line["kind"] for line in lines}
    assert all("\n" not in r.json_line for r in first)

    middle = len(first) // 2
    resumed = await _export(server, admin, first[middle - 1].cursor)
    assert [r.json_line for r in resumed] == [r.json_line for r in first[middle:]]

    # Written after the first export ended: resuming from its last cursor gets exactly them.
    for _ in range(3):
        await submit(server, service)
    later = await _export(server, admin, first[-1].cursor)
    later_lines = [json.loads(r.json_line) for r in later]
    assert [line["seq"] for line in later_lines] == list(
        range(len(first) + 1, len(first) + 1 + len(later))
    )
    assert [line["kind"] for line in later_lines].count("decision.submit") == 3
    assert later_lines[0]["prev_hash"] == lines[-1]["hash"]
    assert await _export(server, admin, later[-1].cursor) == []


async def test_export_runs_past_a_page_while_others_write(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    await _failed_logins(server, 3, "filler")
    seen: list[int] = []
    cursor = ""
    # Rounds of export and writes interleaved: every seq arrives once, in order.
    for _ in range(3):
        writes = asyncio.create_task(_failed_logins(server, 4, f"w{len(seen)}"))
        replies = await _export(server, admin, cursor)
        seen.extend(json.loads(r.json_line)["seq"] for r in replies)
        cursor = replies[-1].cursor if replies else cursor
        await writes
    seen.extend(json.loads(r.json_line)["seq"] for r in await _export(server, admin, cursor))
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) == len(await _ids(server))


@pytest.mark.parametrize(
    "forge",
    [
        lambda real: "not a cursor!",
        lambda real: opaque.encode(b"a:1"),  # a ListAuditEvents page token
        lambda real: opaque.encode(b"x:-3"),
        lambda real: opaque.encode(b"x:99999999"),  # well formed, past the end
        lambda real: real[:-2],
    ],
    ids=["garbage", "other-kind", "negative", "past-the-end", "truncated"],
)
async def test_a_forged_cursor_is_invalid_argument(
    server: Harness, forge: Callable[[str], str]
) -> None:
    admin = await server.as_role(Role.ADMIN)
    real = (await _export(server, admin))[-1].cursor
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _export(server, admin, forge(real))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "resume_cursor: is not a cursor this method returned" in (err.value.details() or "")


async def test_export_is_for_admins_only(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _export(server, analyst)
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


# -- upgrading ---------------------------------------------------------------------------


def _migrate(step: Callable[..., None], revision: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(schema.MIGRATIONS))
        cfg.attributes["connection"] = conn
        step(cfg, revision)

    return run


@pytest.fixture
async def upgraded_url(database_url: str) -> AsyncIterator[str]:
    """A database the old build wrote audit rows to, then upgraded to this build."""
    engine = make_engine(database_url, timeout_s=10)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_migrate(command.downgrade, "0004"))
            # SQLite keeps UTC times without an offset, as SQLAlchemy writes them.
            zone = "+00:00" if conn.dialect.name == "postgresql" else ""
            for n in range(3):
                await conn.execute(
                    text(
                        "INSERT INTO audit_events (time, actor, kind, target, peer, outcome,"
                        " details) VALUES (:time, :actor, 'auth.login', :actor, 'ipv4:10.0.0.1',"
                        " 1, :details)"
                    ),
                    {
                        "time": f"2026-01-02 03:04:05.123456{zone}",
                        "actor": f"old-{n}",
                        "details": json.dumps({"result": "tokens", "n": str(n)}),
                    },
                )
        async with engine.begin() as conn:
            await conn.run_sync(_migrate(command.upgrade, "head"))
        yield database_url
    finally:
        await engine.dispose()


async def test_rows_written_before_the_upgrade_are_chained(
    upgraded_url: str, make_server: ServerFactory
) -> None:
    async with make_server() as server:
        report = await audit_chain.verify(server.running.engine)
        assert report.ok, report.breaks
        before = report.rows  # the three old rows, and whatever starting up wrote since
        for n in range(3):
            [old] = await audit_rows(server, "auth.login", f"old-{n}")
            assert (old.seq, old.request_id) == (n + 1, "")
        await _failed_logins(server, 2, "new")
        report = await audit_chain.verify(server.running.engine)
        assert report.ok, report.breaks
        assert report.rows == before + 2
