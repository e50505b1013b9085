"""The event log's order: nothing is skipped or repeated when commits race or writers stall."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import select, text

from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import Role
from hitl_grpc.store.codec import decision_to_row, row_to_payload
from hitl_grpc.store.events import APPEND_LOCK_KEY
from hitl_grpc.store.tables import decision_events
from tests.decisions_support import wait_until
from tests.harness import Harness
from tests.watching import (
    event_of,
    hand_decision,
    hub_of,
    next_of,
    submit_request,
    take,
    watch,
    watch_live,
)

STRANDED_TIMEOUT_S = 1.0


@pytest.mark.parametrize("backend", ["postgres"])
async def test_commit_waiting_for_the_append_lock_is_ordered_after_its_holder(
    server: Harness,
) -> None:
    analyst = await server.as_role(Role.ANALYST)
    stream = await watch_live(server, analyst)
    hub = hub_of(server)

    # A session in the middle of publishing: it holds the append lock, its position drawn.
    async with await _raw(server) as holder:
        await holder.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))
        await holder.execute(_RAW_APPEND, _raw_event("holds-the-lock"))
        async with server.running.uow() as second:
            await second.events.append(hand_decision("waits-for-it"), EventKind.ADDED)
            committing = asyncio.create_task(second.commit())
            await wait_until(lambda: _waiting_for_the_append_lock(server))
            # The reader looks at the log while the holder is still open: it must not
            # move past a position that can still appear.
            await hub.sync()
            assert not committing.done()
            await holder.commit()
            await committing

    replies = await take(stream, 2)
    assert [event_of(r)[1] for r in replies] == ["holds-the-lock", "waits-for-it"]
    assert await _stored_history(server) == ["holds-the-lock", "waits-for-it"]

    # A resume from the first event yields the second, once.
    resumed = watch(server, analyst, replies[0].cursor)
    assert event_of(await next_of(resumed))[1] == "waits-for-it"
    await _append_one(server, "later")
    assert event_of(await next_of(resumed))[1] == "later"
    assert event_of(await next_of(stream))[1] == "later"


@pytest.mark.parametrize("backend", ["postgres"])
async def test_writer_cut_off_before_its_commit_delays_nobody(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    candi = await server.as_role(Role.SERVICE)
    stream = await watch_live(server, analyst)
    # A writer of ours that staged its event and then lost its client: idle in its
    # transaction, it holds no append lock, since publishing happens in the COMMIT.
    async with await _raw(server) as stranded:
        await stranded.execute(
            "INSERT INTO decision_events_staged (analysis_id, kind, status, priority, version,"
            " time, payload, size) VALUES (%(analysis_id)s, 'added', 1, 2, 1, now(),"
            " %(payload)s::json, %(size)s)",
            _raw_event("never-committed"),
        )
        reply = await server.decisions.SubmitDecision(
            submit_request("not-held-up"), metadata=candi, timeout=10
        )
        assert reply.created
        assert event_of(await next_of(stream)) == ("added", "not-held-up", 1)
        await stranded.rollback()
    assert await _stored_history(server) == ["not-held-up"]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_writers_committing_out_of_order_match_the_stored_history(
    server: Harness,
) -> None:
    analyst = await server.as_role(Role.ANALYST)
    stream = await watch_live(server, analyst)
    count = 6
    # Every writer opens and does its work, then they commit in reverse order, with the
    # reader looking at the log in between.
    release = [asyncio.Event() for _ in range(count)]
    committed = [asyncio.Event() for _ in range(count)]

    async def write(n: int) -> None:
        async with server.running.uow() as uow:
            await uow.decisions.get(hand_decision(f"w-{n}").analysis_id)
            await uow.events.append(hand_decision(f"w-{n}"), EventKind.ADDED)
            await release[n].wait()
            await uow.commit()
        committed[n].set()

    writers = [asyncio.create_task(write(n)) for n in range(count)]
    for n in reversed(range(count)):
        release[n].set()
        await committed[n].wait()
        await hub_of(server).sync()
    await asyncio.gather(*writers)

    replies = await take(stream, count)
    seen = [event_of(r)[1] for r in replies]
    history = await _stored_history(server)
    assert seen == history == [f"w-{n}" for n in reversed(range(count))]
    # Resuming from any point yields exactly the rest of the stored history.
    for cut in (0, count // 2, count - 2):
        resumed = watch(server, analyst, replies[cut].cursor)
        rest = await take(resumed, count - cut - 1)
        assert [event_of(r)[1] for r in rest] == history[cut + 1 :]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_stranded_writer_delays_others_only_until_its_session_times_out(
    server: Harness,
) -> None:
    analyst = await server.as_role(Role.ANALYST)
    candi = await server.as_role(Role.SERVICE)
    stream = await watch_live(server, analyst)
    await _append_one(server, "before")
    before = await next_of(stream)

    # A session cut off while it holds the append lock (our writers hold it only inside
    # their COMMIT): idle in its transaction until PostgreSQL ends its session.
    stranded = await _raw(server)
    await stranded.execute(
        f"SET idle_in_transaction_session_timeout = '{int(STRANDED_TIMEOUT_S * 1000)}ms'"
    )
    await stranded.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))
    await stranded.execute(_RAW_APPEND, _raw_event("stranded"))
    started = time.monotonic()
    reply = await server.decisions.SubmitDecision(
        submit_request("after-the-stranded-writer"), metadata=candi, timeout=10
    )
    after = await next_of(stream, 10)
    waited_s = time.monotonic() - started
    assert reply.created
    assert event_of(after) == ("added", "after-the-stranded-writer", 1)
    # It waited for the stranded session's end, and not much longer.
    assert STRANDED_TIMEOUT_S * 0.9 <= waited_s < STRANDED_TIMEOUT_S + 5
    # PostgreSQL ended the stranded session (and rolled its INSERT back).
    with pytest.raises((psycopg.errors.IdleInTransactionSessionTimeout, psycopg.OperationalError)):
        await stranded.execute("SELECT 1")
    await stranded.close()

    # No skip: the stranded position never appeared, and a resume sees the stored history.
    assert await _stored_history(server) == ["before", "after-the-stranded-writer"]
    resumed = watch(server, analyst, before.cursor)
    assert event_of(await next_of(resumed))[1] == "after-the-stranded-writer"


@pytest.mark.parametrize("backend", ["postgres"])
async def test_snapshot_taken_beside_an_open_transaction_misses_nothing(
    server: Harness,
) -> None:
    analyst = await server.as_role(Role.ANALYST)
    async with server.running.uow() as slow:
        await slow.events.append(hand_decision("slow"), EventKind.ADDED)
        await _append_one(server, "quick")
        # The snapshot sees "quick" committed and "slow" still open.
        stream = await watch_live(server, analyst)
        await slow.commit()
    await _append_one(server, "after")
    replies = await take(stream, 2)
    # "quick" was already reflected by the snapshot; "slow" was not.
    assert [event_of(r)[1] for r in replies] == ["slow", "after"]


_RAW_APPEND = (
    "INSERT INTO decision_events (analysis_id, kind, status, priority, version, time, payload,"
    " size) VALUES (%(analysis_id)s, 'added', 1, 2, 1, now(), %(payload)s::json, %(size)s)"
)


async def _raw(server: Harness) -> psycopg.AsyncConnection[Any]:
    """A session of its own on the test's database, outside the service."""
    url = server.running.settings.database_url
    return await psycopg.AsyncConnection.connect(url, connect_timeout=5)


def _raw_event(analysis_id: str) -> dict[str, object]:
    payload = row_to_payload(decision_to_row(hand_decision(analysis_id)))
    return {"analysis_id": analysis_id, "payload": json.dumps(payload), "size": 1000}


async def _append_one(server: Harness, analysis_id: str) -> None:
    async with server.running.uow() as uow:
        await uow.events.append(hand_decision(analysis_id), EventKind.ADDED)
        await uow.commit()


async def _stored_history(server: Harness) -> list[str]:
    async with server.running.uow(readonly=True) as uow:
        rows = await uow.connection.execute(
            select(decision_events.c.analysis_id).order_by(decision_events.c.position)
        )
        return [r.analysis_id for r in rows]


async def _waiting_for_the_append_lock(server: Harness) -> bool:
    async with server.running.uow(readonly=True) as uow:
        rows = await uow.connection.execute(
            text("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        )
        return rows.first() is not None


@pytest.mark.parametrize("backend", ["postgres"])
async def test_positions_come_from_a_sequence_without_per_session_cache(server: Harness) -> None:
    # A cached sequence hands each session its own block of values: under the append
    # lock one session could then commit a lower position after another's higher one.
    async with server.running.uow(readonly=True) as uow:
        cache = (
            await uow.connection.execute(
                text(
                    "SELECT cache_size FROM pg_sequences"
                    " WHERE sequencename = pg_get_serial_sequence('decision_events', 'position')"
                    "::regclass::text"
                )
            )
        ).scalar_one()
    assert cache == 1
