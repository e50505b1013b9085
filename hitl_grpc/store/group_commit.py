"""Group commit: concurrent writes share one transaction and one commit, each whole or not.

One writer task per process runs the writes that arrive, one after another, each in its
own SAVEPOINT of one transaction: a write that raises is rolled back to its savepoint
alone and its caller gets its own error, the others go on. While one transaction runs,
writes arriving meanwhile join it (up to `max_items`); then one COMMIT makes them all
durable, and only then is each caller answered and the event reader woken.

On SQLite this also ends the queue for the database's one write lock: the writer holds
it for a whole group, so callers no longer wait on busy_timeout one transaction at a time.

Deadlines. A write carries its caller's deadline (the door's). A group's transaction
runs under the deadline of its first write, and writes join only if theirs is no
earlier, so by the time any caller's deadline passes its group has committed or is
being given up. A caller whose deadline passes is told UNAVAILABLE at once; a write
not yet started is then dropped, and a started one can only have been committed by a
COMMIT already under way when the deadline struck, as with any single transaction.
A write with less than a tenth of its deadline left when its turn comes is not started
(UNAVAILABLE, nothing written), so it cannot lead a group into timing out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain import errors
from hitl_grpc.domain.ports import Repositories
from hitl_grpc.store.audit import AuditLog
from hitl_grpc.store.backup_codes import BackupCodeRepository
from hitl_grpc.store.decisions import DecisionRepository
from hitl_grpc.store.door import LATE, UNAVAILABLE, Door, is_unavailable
from hitl_grpc.store.events import EventLog
from hitl_grpc.store.refresh_tokens import RefreshTokenRepository
from hitl_grpc.store.throttle import LoginThrottleRepository
from hitl_grpc.store.users import UserRepository
from hitl_grpc.store.webhooks import WebhookOutbox

T = TypeVar("T")

# A write is started only with at least this share of its deadline left, and a group takes
# no more writes once its own time falls below it: a group led by a write about to time
# out would otherwise take the writes joining it down with it.
_START_SHARE: Final = 0.1


class SharedRepositories:
    """One write's repositories over the group's connection; its rows, flushed apart."""

    def __init__(self, conn: AsyncConnection, webhook_urls: Sequence[str]) -> None:
        self.users = UserRepository(conn)
        self.refresh_tokens = RefreshTokenRepository(conn)
        self.audit = AuditLog(conn)
        self.backup_codes = BackupCodeRepository(conn)
        self.throttle = LoginThrottleRepository(conn)
        self.events = EventLog(conn)
        self.decisions = DecisionRepository(conn)
        self.webhooks = WebhookOutbox(conn, webhook_urls)

    async def flush(self) -> None:
        """Writes this write's audit rows and events, as a unit of work does before COMMIT."""
        await self.audit.flush()
        await self.events.flush()


def _retrieved(future: asyncio.Future[Any]) -> None:
    # A caller that gave up never reads its outcome; reading it here keeps asyncio quiet.
    if not future.cancelled():
        future.exception()


class _Write(Generic[T]):
    """One caller's write, waiting for its turn, then for its group's commit."""

    def __init__(self, work: Callable[[Repositories], Awaitable[T]], deadline: float) -> None:
        self.work = work
        self.deadline = deadline
        self.future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.future.add_done_callback(_retrieved)
        self.started = False
        self.abandoned = False
        # Filled once the write ran: its result or its own error, and whether it wrote events.
        self.value: T | None = None
        self.error: BaseException | None = None
        self.appended = False

    async def run(self, conn: AsyncConnection, webhook_urls: Sequence[str]) -> None:
        """Runs the write in a savepoint; raises only when the group cannot go on."""
        self.started = True
        repos = SharedRepositories(conn, webhook_urls)
        savepoint = await conn.begin_nested()
        try:
            self.value = await self.work(repos)
            await repos.flush()
        except Exception as exc:
            # Only this write is undone; if even that fails, the group's connection is lost.
            await savepoint.rollback()
            if not isinstance(exc, errors.DomainError) and is_unavailable(exc):
                self.error = errors.Unavailable(UNAVAILABLE)
                self.error.__cause__ = exc
            else:
                self.error = exc
            return
        await savepoint.commit()
        self.appended = repos.events.appended

    def answer(self) -> None:
        """Hands the caller its result, or its own error, after the group's commit."""
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.value)  # type: ignore[arg-type]  # set by run()

    def fail(self, error: BaseException) -> None:
        """Tells the caller its group was not committed."""
        if not self.future.done():
            self.future.set_exception(error)


class GroupCommit:
    """The process's group-commit writer over one door."""

    def __init__(
        self,
        door: Door,
        *,
        max_items: int,
        after_commit: Callable[[], None] | None = None,
        webhook_urls: Sequence[str] = (),
    ) -> None:
        self._door = door
        self._max_items = max_items
        self._after_commit = after_commit
        self._webhook_urls = tuple(webhook_urls)
        self._queue: collections.deque[_Write[Any]] = collections.deque()
        timeout_s = door.timeout_s
        self._start_floor_s = 0.0 if timeout_s is None else timeout_s * _START_SHARE
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Transactions committed, and the writes they carried (observable by tests and bench).
        self.commits = 0
        self.writes = 0
        # The most writes one commit carried.
        self.largest = 0

    @property
    def waiting(self) -> int:
        """Writes queued for the next turn (abandoned ones until the writer drops them)."""
        return len(self._queue)

    async def write(self, work: Callable[[Repositories], Awaitable[T]]) -> T:
        """Runs `work` in the next group and returns its result once the group committed."""
        if self._closed:
            raise errors.Unavailable("server is shutting down, retry")
        loop = asyncio.get_running_loop()
        timeout_s = self._door.timeout_s
        deadline = math.inf if timeout_s is None else loop.time() + timeout_s
        item = _Write(work, deadline)
        self._queue.append(item)
        self._arrived.set()
        if self._task is None or self._task.done():
            # Started by the first write; a writer that died of a bug is started again.
            self._task = asyncio.create_task(self._run(), name="hitl-group-commit")
        try:
            async with asyncio.timeout_at(None if timeout_s is None else deadline):
                return await asyncio.shield(item.future)
        except TimeoutError:
            item.abandoned = True
            raise errors.Unavailable(LATE) from None
        except asyncio.CancelledError:
            item.abandoned = True
            raise

    async def close(self) -> None:
        """Stops the writer; writes still waiting are told UNAVAILABLE."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            self._queue.popleft().fail(errors.Unavailable("server is shutting down, retry"))

    def _next(self, not_before: float) -> _Write[Any] | None:
        """The next write still wanted whose deadline is no earlier than `not_before`."""
        now = asyncio.get_running_loop().time()
        while self._queue:
            item = self._queue[0]
            if item.abandoned:
                self._queue.popleft()
                continue
            if item.deadline < not_before:
                return None
            self._queue.popleft()
            if item.deadline - now < self._start_floor_s:
                # Too late to start: nothing of it is written, its caller hears now.
                item.fail(errors.Unavailable(LATE))
                continue
            return item
        return None

    async def _run(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while (first := self._next(-math.inf)) is not None:
                await self._group(first)

    async def _group(self, first: _Write[Any]) -> None:
        group = [first]
        loop = asyncio.get_running_loop()
        try:
            timeout_s = None if math.isinf(first.deadline) else first.deadline - loop.time()
            if timeout_s is not None and timeout_s <= 0:
                raise errors.Unavailable(LATE)
            async with self._door.passage(timeout_s=timeout_s) as tx:
                conn = tx.connection
                item: _Write[Any] | None = first
                while item is not None:
                    await item.run(conn, self._webhook_urls)
                    if len(group) == self._max_items:
                        break
                    if first.deadline - loop.time() < self._start_floor_s:
                        break
                    # Arrived while this transaction ran: join it.
                    item = self._next(first.deadline)
                    if item is not None:
                        group.append(item)
                if any(item.error is None for item in group):
                    await tx.commit()
        except asyncio.CancelledError:
            for item in group:
                item.fail(errors.Unavailable("server is shutting down, retry"))
            raise
        except errors.Unavailable as unavailable:
            for item in group:
                item.fail(unavailable)
            return
        except Exception as exc:
            lost = errors.Unavailable(UNAVAILABLE)
            lost.__cause__ = exc
            for item in group:
                item.fail(lost)
            return
        committed = [item for item in group if item.error is None]
        if committed:
            self.commits += 1
            self.writes += len(committed)
            self.largest = max(self.largest, len(committed))
        for item in group:
            item.answer()
        if self._after_commit is not None and any(item.appended for item in committed):
            # Wakes this process's event reader; other processes learn by NOTIFY.
            self._after_commit()
