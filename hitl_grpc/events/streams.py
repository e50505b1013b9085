"""The two watches, as async iterators of domain items: the pending queue and one decision."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from hitl_grpc.domain import errors
from hitl_grpc.domain.lifecycle import TERMINAL
from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.queue import QueueKey
from hitl_grpc.domain.values import AnalysisId, Decision, Priority
from hitl_grpc.events.cursor import SNAPSHOT_CURSOR, decode, encode
from hitl_grpc.events.hub import BATCH, EventHub
from hitl_grpc.store.outbox import StoredEvent

AHEAD: Final = "cursor is ahead of the event log; start again without a cursor"
PRUNED: Final = "cursor is older than the retained event log; start again without a cursor"


class ItemKind(enum.Enum):
    """What a WatchPending message says."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"
    SNAPSHOT_COMPLETE = "snapshot_complete"
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class PendingItem:
    """One WatchPending message; `event` is set for items read from the log.

    A live event is the hub's SharedEvent: its message is encoded once for every watcher.
    """

    kind: ItemKind
    cursor: str
    decision: Decision | None = None
    event: StoredEvent | None = None


@dataclass(frozen=True)
class DecisionItem:
    """One WatchDecision message; `event` is the live event it came from, if it did."""

    decision: Decision
    cursor: str
    event: StoredEvent | None = None


_KIND_OF: Final = {
    EventKind.ADDED: ItemKind.ADDED,
    EventKind.UPDATED: ItemKind.UPDATED,
    EventKind.REMOVED: ItemKind.REMOVED,
}


async def watch_pending(
    hub: EventHub,
    priorities: frozenset[Priority],
    cursor: int | None,
    heartbeat_s: float,
) -> AsyncIterator[PendingItem]:
    """The open set (without a cursor), then every change after the cursor, forever."""

    def wanted(event: StoredEvent) -> bool:
        return not priorities or event.priority in priorities

    if cursor is None:
        async for item in _snapshot(hub, priorities, wanted):
            yield item
            if item.kind is ItemKind.SNAPSHOT_COMPLETE:
                cursor = decode(item.cursor)
        assert cursor is not None
    else:
        bounds = await hub.store.bounds()
        if cursor > bounds.head:
            raise errors.OutOfRange(AHEAD)
        if cursor < bounds.pruned:
            raise errors.OutOfRange(PRUNED)

    # Catch up from the log until the cursor reaches what the hub has fanned out, then
    # subscribe with no await in between: no event falls between the two.
    while cursor < hub.head:
        upto = hub.head
        events, pruned = await hub.store.read_range(cursor, upto, BATCH, hub.page_bytes)
        if cursor < pruned:
            raise errors.OutOfRange(PRUNED)
        if not events:
            cursor = upto
        for event in events:
            cursor = event.position
            if wanted(event):
                yield PendingItem(_KIND_OF[event.kind], encode(cursor), event.decision, event)
    subscription = hub.subscribe(priorities)
    try:
        while True:
            live = await subscription.get(heartbeat_s)
            if live is None:
                # Idle: every event fanned out so far was seen or filtered out.
                if subscription.idle:
                    cursor = max(cursor, hub.head)
                yield PendingItem(ItemKind.HEARTBEAT, encode(cursor))
                continue
            if live.position <= cursor:
                continue
            cursor = live.position
            yield PendingItem(_KIND_OF[live.kind], encode(cursor), live.decision, live)
    finally:
        subscription.close()


async def _snapshot(
    hub: EventHub, priorities: frozenset[Priority], wanted: Callable[[StoredEvent], bool]
) -> AsyncIterator[PendingItem]:
    """The open set, read and sent a page at a time, then what changed while it was read.

    Pages come from separate reads, so the set is not one instant's: the log from before
    the first page to after the last is replayed against the versions the pages showed,
    so nothing is shown twice at one version, nothing never shown is removed, and nothing
    is missed. The last item carries the cursor of the log position it all reflects.
    """
    start = await hub.store.head()  # before the first page: replaying from it misses nothing
    shown: dict[AnalysisId, int] = {}
    after: QueueKey | None = None
    while True:
        page = await hub.store.snapshot_page(after, priorities, hub.page_bytes)
        for decision in page.decisions:
            shown[decision.analysis_id] = decision.version
            yield PendingItem(ItemKind.ADDED, SNAPSHOT_CURSOR, decision)
        if not page.more or not page.decisions:
            break
        after = QueueKey.of(page.decisions[-1])
    end = await hub.store.head()  # after the last page: every page is at or before it
    position = start
    while position < end:
        events, pruned = await hub.store.read_range(position, end, BATCH, hub.page_bytes)
        if position < pruned:
            raise errors.OutOfRange(PRUNED)
        if not events:
            break
        for event in events:
            position = event.position
            if not wanted(event):
                continue
            seen = shown.get(event.analysis_id)
            # An item never shown was closed before its page was read (its events are
            # skipped) or opened after its place in the queue was passed (its `added` is
            # here, and what follows it).
            if seen is None and event.kind is not EventKind.ADDED:
                continue
            if seen is not None and event.decision.version <= seen:
                continue
            shown[event.analysis_id] = event.decision.version
            yield PendingItem(_KIND_OF[event.kind], SNAPSHOT_CURSOR, event.decision, event)
    yield PendingItem(ItemKind.SNAPSHOT_COMPLETE, encode(end))


async def watch_decision(
    hub: EventHub,
    analysis_id: AnalysisId,
    visible: Callable[[Decision], bool],
) -> AsyncIterator[DecisionItem]:
    """One decision's current state, then each change; ends after a terminal state."""
    subscription = hub.subscribe_decision(analysis_id)
    try:
        cursor = hub.head
        current = await hub.store.decision(analysis_id)
        if current is None or not visible(current):
            raise errors.NotFound(f"no decision {analysis_id!r}")
        yield DecisionItem(current, encode(cursor))
        version = current.version
        while current.status not in TERMINAL:
            event = await subscription.get(None)
            assert event is not None
            # Versions only grow: an event the state read already showed is skipped.
            if event.decision.version <= version:
                continue
            current, version = event.decision, event.decision.version
            yield DecisionItem(current, encode(event.position), event)
    finally:
        subscription.close()
