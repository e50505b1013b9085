"""One event reader per process, fanning the outbox out to every local watcher.

The reader wakes on a signal (a local commit, a PostgreSQL NOTIFY from any replica) or
on a catch-up timer, reads the next batch of committed events once, and offers each
event to every matching subscription. With a linger it rests that long after each read,
so that many commits (and their NOTIFYs, which every worker and replica receives) cost
one read per linger rather than one per commit. Subscriptions hold queues bounded in events and in
bytes: a watcher that falls behind is dropped (and told so) instead of stalling the reader
or the others, or holding the events it has not taken in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Final

from hitl_grpc import tasks
from hitl_grpc.domain import errors
from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.values import AnalysisId, Priority
from hitl_grpc.store.door import Door
from hitl_grpc.store.events import NOTIFY_CHANNEL
from hitl_grpc.store.outbox import EventStore, NewEvents, StoredEvent

log = logging.getLogger("hitl_grpc.events")

BATCH: Final = 500
ERROR_BACKOFF_MAX_S: Final = 5.0
IDLE_SLACK_S: Final = 0.001


@dataclass(frozen=True, eq=False)
class SharedEvent(StoredEvent):
    """An event as the fan-out hands it to every local watcher, itself shared by them all.

    What a watcher sends for it is made by the first watcher that needs it and reused by
    the others: one encoding per event and message shape, not one per watcher. It lives
    only as long as some watcher still holds the event.
    """

    _encoded: dict[Hashable, bytes] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def of(cls, event: StoredEvent) -> SharedEvent:
        """The event, ready to be shared."""
        return cls(**{f.name: getattr(event, f.name) for f in fields(StoredEvent) if f.init})

    def encoded(self, shape: Hashable, encode: Callable[[], bytes]) -> bytes:
        """The event sent as `shape` (which says everything `encode` depends on)."""
        found = self._encoded.get(shape)
        if found is None:
            found = self._encoded[shape] = encode()
        return found


class Subscription:
    """One watcher's bounded queue of events, fed by the hub."""

    __slots__ = (
        "_capacity",
        "_capacity_bytes",
        "_ended",
        "_hub",
        "_match",
        "_queue",
        "_queued_bytes",
        "_timer",
        "_waiter",
        "_waiting_since",
        "key",
    )

    def __init__(
        self,
        hub: EventHub,
        capacity: int,
        capacity_bytes: int,
        match: Callable[[StoredEvent], bool] | None,
        key: AnalysisId | None,
    ) -> None:
        self._hub = hub
        self._capacity = capacity
        self._capacity_bytes = capacity_bytes
        self._queued_bytes = 0
        self._match = match
        self._queue: deque[SharedEvent] = deque()
        # Resolved True by an event (or the end), False by the idle timer.
        self._waiter: asyncio.Future[bool] | None = None
        self._waiting_since = 0.0
        # The idle timer outlives the waits it does not end: an event does not cancel
        # it, and when it fires early for the wait then running it sets itself again.
        # One timer per idle period instead of one per message.
        self._timer: asyncio.TimerHandle | None = None
        self._ended: errors.DomainError | None = None
        self.key = key

    def offer(self, event: SharedEvent) -> bool:
        """Queues an event; False (and the subscription ended) if the queue is full."""
        if self._match is not None and not self._match(event):
            return True
        # One event always fits, however large: the byte bound cuts off watchers that
        # fall behind, never one that keeps up with big decisions.
        over_bytes = bool(self._queue) and self._queued_bytes + event.size > self._capacity_bytes
        if len(self._queue) >= self._capacity or over_bytes:
            self._hub.cut_off()
            self.end(
                errors.ResourceExhausted(
                    "watcher fell behind the event stream; resume from the last cursor"
                )
            )
            return False
        self._queue.append(event)
        self._queued_bytes += event.size
        self._wake()
        return True

    def end(self, reason: errors.DomainError) -> None:
        """Ends the subscription: the watcher's next get() raises `reason`."""
        if self._ended is None:
            self._ended = reason
            self._queue.clear()  # what a dropped watcher missed it re-reads on resume
            self._queued_bytes = 0
            self._hub.forget(self)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def _idle_timer(self, timeout_s: float) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no wait running: the next one sets the timer
        loop = asyncio.get_running_loop()
        due = self._waiting_since + timeout_s
        # A timer may run a hair before its time (the loop's clock resolution).
        if loop.time() >= due - IDLE_SLACK_S:
            waiter.set_result(False)
        else:
            self._timer = loop.call_at(due, self._idle_timer, timeout_s)

    @property
    def idle(self) -> bool:
        """Whether every event offered so far has been taken."""
        return not self._queue

    async def get(self, timeout_s: float | None) -> SharedEvent | None:
        """The next event; None if none came within `timeout_s`."""
        if not self._queue and self._ended is None:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            self._waiting_since = loop.time()
            if timeout_s is not None and self._timer is None:
                self._timer = loop.call_at(
                    self._waiting_since + timeout_s, self._idle_timer, timeout_s
                )
            try:
                if not await waiter:
                    return None
            finally:
                self._waiter = None
        if self._ended is not None:
            raise self._ended
        event = self._queue.popleft()
        self._queued_bytes -= event.size
        return event

    def close(self) -> None:
        """The watcher is gone."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ended is None:
            self._ended = errors.Unavailable("watch closed")
            self._queue.clear()
            self._queued_bytes = 0
            self._hub.forget(self)


class EventHub:
    """The process's one reader of the outbox and its subscriptions."""

    def __init__(
        self,
        door: Door,
        clock: Clock,
        *,
        queue_size: int,
        queue_bytes: int,
        page_bytes: int,
        catchup_s: float,
        retention: timedelta,
        prune_interval_s: float,
        listen_check_s: float = 5.0,
        wake_linger_s: float = 0.0,
        on_fan_out: Callable[[float], None] | None = None,
        on_cut_off: Callable[[], None] | None = None,
        on_read: Callable[[], None] | None = None,
        hot_new_events: NewEvents | None = None,
    ) -> None:
        self.store = EventStore(door, hot_new_events=hot_new_events)
        # The rest after each read: the wake-ups of commits meanwhile make one read.
        self._wake_linger_s = wake_linger_s
        # Told each time the reader reads the log (once per wake-up it serves).
        self._on_read = on_read
        # Told, per event, how long after its change it reached the local watchers.
        self._on_fan_out = on_fan_out
        # Told each time a watcher that fell behind is cut off.
        self._on_cut_off = on_cut_off
        self._door = door
        self._clock = clock
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        # How much of the open set or the log one watcher reads and holds at a time.
        self.page_bytes = page_bytes
        self._catchup_s = catchup_s
        self._retention = retention
        self._prune_interval_s = prune_interval_s
        self._listen_check_s = listen_check_s
        self.head = 0
        self._wake = asyncio.Event()
        self._all: set[Subscription] = set()
        self._by_id: dict[AnalysisId, set[Subscription]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._listening = asyncio.Event()

    @property
    def watchers(self) -> int:
        """Live subscriptions in this process."""
        return len(self._all) + sum(len(s) for s in self._by_id.values())

    async def start(self) -> None:
        """Reads where the log ends now and starts the reader, listener and pruner."""
        self.head = await self.store.head()
        self._tasks.append(asyncio.create_task(self._read_loop(), name="hitl-event-reader"))
        self._tasks.append(asyncio.create_task(self._prune_loop(), name="hitl-event-pruner"))
        if self.store.postgres:
            self._tasks.append(asyncio.create_task(self._listen_loop(), name="hitl-event-listen"))
            # Until LISTEN is in place another replica's commit would only arrive by catch-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._door.timeout_s):
                    await self._listening.wait()
            if not self._listening.is_set():
                log.warning("LISTEN %s not established yet; relying on catch-up", NOTIFY_CHANNEL)

    def end_watches(self) -> None:
        """Ends every watch with UNAVAILABLE, so clients reconnect elsewhere; refuses new ones."""
        self._closing = True
        for sub in [*self._all, *(s for subs in self._by_id.values() for s in subs)]:
            sub.end(errors.Unavailable("server is shutting down; reconnect and resume"))

    async def close(self) -> None:
        """Ends every watch and stops the reader, listener and pruner, each within a bound."""
        self.end_watches()
        running, self._tasks = self._tasks, []
        await asyncio.gather(*(tasks.stop(task) for task in running))

    def wake(self) -> None:
        """Something was committed: read the log soon."""
        self._wake.set()

    def subscribe(self, priorities: Iterable[Priority] = ()) -> Subscription:
        """A subscription to every event (of these priorities, if any) after `head`."""
        wanted = frozenset(priorities)
        match = (lambda e: e.priority in wanted) if wanted else None
        sub = Subscription(self, self._queue_size, self._queue_bytes, match, None)
        self._register(sub)
        self._all.add(sub)
        return sub

    def subscribe_decision(self, analysis_id: AnalysisId) -> Subscription:
        """A subscription to one decision's events after `head`."""
        sub = Subscription(self, self._queue_size, self._queue_bytes, None, analysis_id)
        self._register(sub)
        self._by_id.setdefault(analysis_id, set()).add(sub)
        return sub

    def _register(self, sub: Subscription) -> None:
        if self._closing:
            raise errors.Unavailable("server is shutting down; reconnect and resume")

    def cut_off(self) -> None:
        """Counts a watcher cut off for falling behind."""
        if self._on_cut_off is not None:
            self._on_cut_off()

    def forget(self, sub: Subscription) -> None:
        """Drops a subscription from the fan-out."""
        if sub.key is None:
            self._all.discard(sub)
            return
        subs = self._by_id.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_id[sub.key]

    async def prune(self) -> int:
        """Deletes events older than the retention; returns how many."""
        return await self.store.prune(self._clock.now() - self._retention)

    def _fan_out(self, events: Iterable[StoredEvent]) -> None:
        for stored in events:
            event = SharedEvent.of(stored)
            for sub in list(self._all):
                sub.offer(event)
            for sub in list(self._by_id.get(event.analysis_id, ())):
                sub.offer(event)
            self.head = event.position
            if self._on_fan_out is not None:
                lag = self._clock.now() - event.decision.updated_at
                self._on_fan_out(max(lag.total_seconds(), 0.0))

    async def _read_once(self) -> None:
        """Reads and fans out everything committed."""
        if self._on_read is not None:
            self._on_read()
        more = True
        while more:
            # A batch holds no more than one watcher's queue may: the reader's own
            # memory stays bounded however large the decisions committed at once.
            events, more = await self.store.read_new(self.head, BATCH, self._queue_bytes)
            self._fan_out(events)

    async def _read_loop(self) -> None:
        delay: float | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay or self._catchup_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("reading the event log failed; retrying", exc_info=True)
                delay = min((delay or 0.1) * 2, ERROR_BACKOFF_MAX_S)
                continue
            delay = None
            if self._wake_linger_s:
                # Wake-ups from here on set the event: the next read, right after the
                # rest, serves them all. A first commit after a quiet spell is read at
                # once; none waits longer than the rest plus one read, and the read
                # always starts from `head`, so batching skips and repeats nothing.
                await asyncio.sleep(self._wake_linger_s)

    async def _listen_loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with self._door.listening(NOTIFY_CHANNEL) as listener:
                    self._listening.set()
                    backoff = 0.1
                    self.wake()  # whatever was committed while not listening
                    async for _ in listener.payloads(self._listen_check_s):
                        self.wake()
            except Exception as exc:
                self._listening.clear()
                log.warning("event listener lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, ERROR_BACKOFF_MAX_S)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self._prune_interval_s)
            try:
                pruned = await self.prune()
                if pruned:
                    log.info("pruned %d events older than %s", pruned, self._retention)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("pruning the event log failed", exc_info=True)
