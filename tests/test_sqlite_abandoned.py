"""A SQLite connection given up on under a held write lock is closed, never left hanging."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from hitl_grpc.domain import errors
from hitl_grpc.store.door import Door
from hitl_grpc.store.engine import make_engine


async def _checked_out(door: Door) -> None:
    async with asyncio.timeout(5):
        # The pool has no event for a checkout; the deadline bounds the poll.
        while door.engine.pool.checkedout() == 0:  # type: ignore[attr-defined]  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("cancels", [1, 50])
async def test_a_caller_cancelled_while_waiting_for_the_write_lock_leaves_nothing_behind(
    tmp_path: Path, cancels: int
) -> None:
    threads_before = set(threading.enumerate())
    path = tmp_path / "hitl.db"
    engine = make_engine(f"sqlite:///{path}", timeout_s=1.0)
    door = Door(engine, timeout_s=1.0)

    async def write() -> None:
        async with door.passage() as passage:
            await passage.commit()

    await write()  # the file exists, in WAL mode, with one pooled connection
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    before = asyncio.all_tasks()
    task = asyncio.create_task(write())
    try:
        await _checked_out(door)
        # A gRPC call cancelled by its client, then again while it cleans up.
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises((asyncio.CancelledError, errors.Unavailable)):
            await task
    finally:
        holder.rollback()
        holder.close()
    others = asyncio.all_tasks() - before - {asyncio.current_task()}
    _, pending = await asyncio.wait(others, timeout=5) if others else (set(), set())
    assert not pending, f"left running: {[t.get_coro() for t in pending]}"
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    # The file is writable again: nothing kept the lock.
    await write()
    await engine.dispose()
    # Every connection's thread ends, the abandoned one's too, once its statement has.
    for thread in set(threading.enumerate()) - threads_before:
        await asyncio.to_thread(thread.join, 5)
        assert not thread.is_alive(), f"{thread.name} still running"
