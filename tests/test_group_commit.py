"""Group commit: concurrent writes share one transaction, each whole or not at all."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import grpc
import pytest
from hitl.v1 import decision_pb2
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from hitl_grpc.config import ConfigError, Settings
from hitl_grpc.domain import errors
from hitl_grpc.domain.ports import Repositories
from hitl_grpc.domain.values import Role
from hitl_grpc.store import audit_chain
from hitl_grpc.store.group_commit import GroupCommit
from tests.decisions_support import submit, wait_until
from tests.harness import Harness, Metadata, ServerFactory
from tests.signin import add_orphan_refresh_token
from tests.watching import event_of, hand_decision, next_of, watch_live

REJECTED = decision_pb2.DECISION_STATUS_REJECTED


def _group(server: Harness) -> GroupCommit:
    group = server.running.uow.group
    assert group is not None, "a server with group commit on"
    return group


@asynccontextmanager
async def _held(server: Harness) -> AsyncIterator[None]:
    """Holds the writer's transaction open: writes arriving meanwhile queue for the next."""
    started, release = asyncio.Event(), asyncio.Event()

    async def hold(_: Repositories) -> None:
        started.set()
        await release.wait()

    holder = asyncio.create_task(_group(server).write(hold))
    async with asyncio.timeout(5):
        await started.wait()
    try:
        yield
    finally:
        release.set()
        # The holder's own outcome is its group's: the tests look at the writes it carried.
        await asyncio.gather(holder, return_exceptions=True)


async def _queued(server: Harness, count: int) -> None:
    group = _group(server)

    async def enough() -> bool:
        return group.waiting >= count

    await wait_until(enough)


def _reject(server: Harness, who: Metadata, analysis_id: str, **fields: Any) -> Awaitable[Any]:
    return server.decisions.MakeDecision(
        decision_pb2.MakeDecisionRequest(
            analysis_id=analysis_id, status=REJECTED, notes="grouped", **fields
        ),
        metadata=who,
        timeout=10,
    )


async def _events(server: Harness, ids: list[str]) -> dict[str, list[int]]:
    """The versions each decision's events carry, in log order."""
    async with server.running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT analysis_id, version FROM decision_events ORDER BY position")
            )
        ).all()
    wanted = set(ids)
    found: dict[str, list[int]] = {i: [] for i in ids}
    for analysis_id, version in rows:
        if analysis_id in wanted:
            found[analysis_id].append(version)
    return found


async def _stored(server: Harness, analysis_id: str) -> tuple[int, int] | None:
    async with server.running.engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT status, version FROM decisions WHERE analysis_id = :id"),
                {"id": analysis_id},
            )
        ).first()
    return None if row is None else (row[0], row[1])


async def _audit_targets(server: Harness) -> list[str]:
    async with server.running.engine.connect() as conn:
        return list((await conn.scalars(text("SELECT target FROM audit_events"))).all())


async def test_concurrent_submits_and_verdicts_share_one_commit(
    make_server: ServerFactory,
) -> None:
    async with make_server(group_commit="on") as server:
        service = await server.as_role(Role.SERVICE)
        analyst = await server.as_role(Role.ANALYST)
        decided = [(await submit(server, service)).analysis_id for _ in range(6)]
        fresh = [f"gc-{uuid.uuid4().hex[:10]}" for _ in range(6)]
        group = _group(server)
        # On PostgreSQL a known caller's submit is one autocommit statement of its own.
        grouped = len(decided) + (0 if server.running.hot is not None else len(fresh))
        async with _held(server):
            commits = group.commits
            calls = [
                *(asyncio.ensure_future(_reject(server, analyst, i)) for i in decided),
                *(asyncio.ensure_future(submit(server, service, i)) for i in fresh),
            ]
            await _queued(server, grouped)
        await asyncio.gather(*calls)
        # The held write's transaction carried every write queued behind it.
        assert group.commits == commits + 1
        assert group.largest >= grouped + 1
        for analysis_id in decided:
            assert await _stored(server, analysis_id) == (int(REJECTED), 2)
        assert await _events(server, decided) == {i: [1, 2] for i in decided}
        assert await _events(server, fresh) == {i: [1] for i in fresh}
        report = await audit_chain.verify(server.running.engine)
        assert report.ok, report.breaks


async def test_a_failing_write_is_undone_alone_and_its_group_commits(
    make_server: ServerFactory,
) -> None:
    async with make_server(group_commit="on") as server:
        service = await server.as_role(Role.SERVICE)
        analyst = await server.as_role(Role.ANALYST)
        good = [(await submit(server, service)).analysis_id for _ in range(3)]
        stale = await submit(server, service)
        done = await submit(server, service)
        await _reject(server, analyst, done.analysis_id)
        watcher = await watch_live(server, analyst)
        doomed_id = f"doomed-{uuid.uuid4().hex[:10]}"
        analysis = hand_decision(doomed_id).analysis

        async def doomed(uow: Repositories) -> None:
            # A row written, then a statement the database refuses (no such user).
            await uow.decisions.insert(analysis, "h", submitted_by="test", sla=timedelta(hours=1))
            await add_orphan_refresh_token(uow)

        group = _group(server)
        async with _held(server):
            commits = group.commits
            # Queued first, so the good writes run after it in the same transaction.
            failing = asyncio.ensure_future(group.write(doomed))
            await _queued(server, 1)
            calls: list[Callable[[], Awaitable[Any]]] = [
                *(lambda i=i: _reject(server, analyst, i) for i in good),
                lambda: _reject(server, analyst, stale.analysis_id, expected_version=7),
                lambda: _reject(server, analyst, done.analysis_id),
                lambda: _reject(server, analyst, f"none-{uuid.uuid4().hex[:8]}"),
            ]
            outcomes = [asyncio.ensure_future(call()) for call in calls]
            await _queued(server, 1 + len(calls))
        results = await asyncio.gather(*outcomes, return_exceptions=True)
        with pytest.raises(IntegrityError):
            await failing
        assert group.commits == commits + 1

        refused = [r.code() for r in results[len(good) :] if isinstance(r, grpc.aio.AioRpcError)]
        assert refused == [
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.NOT_FOUND,
        ]
        for analysis_id in good:
            assert await _stored(server, analysis_id) == (int(REJECTED), 2)
        assert await _stored(server, stale.analysis_id) == (
            int(decision_pb2.DECISION_STATUS_PENDING),
            1,
        )
        assert await _stored(server, doomed_id) is None
        assert doomed_id not in await _audit_targets(server)
        assert await _events(server, [*good, stale.analysis_id, doomed_id]) == {
            **{i: [1, 2] for i in good},
            stale.analysis_id: [1],
            doomed_id: [],
        }
        # Watchers see each verdict once, woken by the shared commit.
        seen: list[tuple[str, str, int]] = []
        while len(seen) < len(good):
            reply = await next_of(watcher)
            if reply.WhichOneof("event") != "heartbeat":
                seen.append(event_of(reply))
        assert sorted(seen) == sorted(("removed", i, int(REJECTED)) for i in good)
        report = await audit_chain.verify(server.running.engine)
        assert report.ok, report.breaks


async def test_a_group_past_its_deadline_writes_nothing_and_the_writer_goes_on(
    make_server: ServerFactory,
) -> None:
    async with make_server(group_commit="on", db_timeout_s=1.0) as server:
        service = await server.as_role(Role.SERVICE)
        group = _group(server)
        written = f"late-{uuid.uuid4().hex[:10]}"

        async def insert(uow: Repositories) -> None:
            analysis = hand_decision(written).analysis
            await uow.decisions.insert(analysis, "h", submitted_by="test", sla=timedelta(hours=1))

        async def stall(_: Repositories) -> None:
            await asyncio.Event().wait()  # until the group's deadline cancels it

        async with _held(server):
            done = asyncio.ensure_future(group.write(insert))
            await _queued(server, 1)
            stuck = asyncio.ensure_future(group.write(stall))
            await _queued(server, 2)
        # Both joined the held group, which cannot commit before its first write's deadline.
        for write in (done, stuck):
            with pytest.raises(errors.Unavailable):
                await write
        assert await _stored(server, written) is None
        assert (await submit(server, service)).version == 1


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_group_commit_is_on_for_sqlite_unless_turned_off(
    make_server: ServerFactory,
) -> None:
    async with make_server() as server:
        assert server.running.uow.group is not None
    async with make_server(group_commit="off") as server:
        assert server.running.uow.group is None
        service = await server.as_role(Role.SERVICE)
        assert (await submit(server, service)).version == 1


def test_a_bad_group_commit_setting_names_itself() -> None:
    with pytest.raises(ConfigError, match="HITL_GROUP_COMMIT: must be auto, on or off"):
        Settings.from_env({"HITL_GROUP_COMMIT": "sometimes"})
    with pytest.raises(ConfigError, match="HITL_GROUP_COMMIT_MAX"):
        Settings.from_env({"HITL_GROUP_COMMIT_MAX": "0"})
    assert not Settings.from_env(
        {"HITL_DATABASE_URL": "postgresql://h/db", "HITL_JWT_SECRET": "k" * 40}
    ).group_commit_on
    assert Settings.from_env({"HITL_GROUP_COMMIT": "on"}).group_commit_max == 64
