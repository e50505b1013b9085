"""The two watches, as async iterators of domain items: the pending queue and one decision."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

from hitl_grpc.domain import errors
from hitl_grpc.domain.ports import EventKind
from hitl_grpc.domain.values import AnalysisId, Decision, Priority, Status
from hitl_grpc.events.cursor import SNAPSHOT_CURSOR, Cursor
from hitl_grpc.events.hub import BATCH, EventHub
from hitl_grpc.store.outbox import StoredEvent

TERMINAL: Final = frozenset({Status.APPROVED, Status.REJECTED, Status.EXPIRED})


class ItemKind(enum.Enum):
    """What a WatchPending message says."""

    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"
    SNAPSHOT_COMPLETE = "snapshot_complete"
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class PendingItem:
    """One WatchPending message; `event` is set for live events (its proto is cached)."""

    kind: ItemKind
    cursor: str
    decision: Decision | None = None
    event: StoredEvent | None = None


_KIND_OF: Final = {
    EventKind.ADDED: ItemKind.ADDED,
    EventKind.UPDATED: ItemKind.UPDATED,
    EventKind.REMOVED: ItemKind.REMOVED,
}


async def watch_pending(
    hub: EventHub,
    priorities: frozenset[Priority],
    cursor: Cursor | None,
    heartbeat_s: float,
) -> AsyncIterator[PendingItem]:
    """The open set (without a cursor), then every change after the cursor, forever."""
    if cursor is None:
        snapshot = await hub.store.snapshot()
        for decision in snapshot.decisions:
            if not priorities or decision.analysis.priority in priorities:
                yield PendingItem(ItemKind.ADDED, SNAPSHOT_CURSOR, decision)
        cursor = Cursor.of_snapshot(snapshot)
        yield PendingItem(ItemKind.SNAPSHOT_COMPLETE, cursor.encode())

    def wanted(event: StoredEvent) -> bool:
        return not priorities or event.priority in priorities

    # Catch up from the log until the cursor reaches what the hub has fanned out, then
    # subscribe with no await in between: no event falls between the two.
    while cursor.after < hub.head:
        upto = hub.head
        events, horizon = await hub.store.read_range(cursor.after, upto, BATCH)
        if cursor.after < horizon:
            raise errors.OutOfRange(
                "cursor is older than the retained event log; start again without a cursor"
            )
        if not events:
            cursor = cursor.advanced(upto)
        for event in events:
            if cursor.admits(event.key):
                cursor = cursor.advanced(event.key)
                if wanted(event):
                    yield PendingItem(_KIND_OF[event.kind], cursor.encode(), event.decision, event)
            else:
                cursor = cursor.advanced(event.key)
    subscription = hub.subscribe(priorities)
    try:
        while True:
            live = await subscription.get(heartbeat_s)
            if live is None:
                # Idle: every event fanned out so far was seen or filtered out.
                if subscription.idle:
                    cursor = cursor.advanced(hub.head)
                yield PendingItem(ItemKind.HEARTBEAT, cursor.encode())
                continue
            if not cursor.admits(live.key):
                continue
            cursor = cursor.advanced(live.key)
            yield PendingItem(_KIND_OF[live.kind], cursor.encode(), live.decision, live)
    finally:
        subscription.close()


async def watch_decision(
    hub: EventHub,
    analysis_id: AnalysisId,
    visible: Callable[[Decision], bool],
) -> AsyncIterator[tuple[Decision, str]]:
    """One decision's current state, then each change; ends after a terminal state."""
    subscription = hub.subscribe_decision(analysis_id)
    try:
        cursor = Cursor(hub.head)
        current = await hub.store.decision(analysis_id)
        if current is None or not visible(current):
            raise errors.NotFound(f"no decision {analysis_id!r}")
        yield current, cursor.encode()
        version = current.version
        while current.status not in TERMINAL:
            event = await subscription.get(None)
            assert event is not None
            # Versions only grow: an event the state read already showed is skipped.
            if event.decision.version <= version:
                continue
            current, version = event.decision, event.decision.version
            yield current, Cursor(event.key).encode()
    finally:
        subscription.close()
