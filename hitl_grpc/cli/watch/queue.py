"""The open queue as the watch stream describes it, and how current the screen is."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from hitl.v1 import decision_pb2

from hitl_grpc.cli.watch.text import clock
from hitl_grpc.client import TERMINAL, PendingChange


class Phase(enum.Enum):
    """Where the connection to the server stands."""

    CONNECTING = "connecting"  # never connected yet
    LOADING = "loading"  # a snapshot is arriving
    LIVE = "live"  # the snapshot is complete and changes flow
    RECONNECTING = "reconnecting"  # the last attempt failed; another follows


@dataclass(frozen=True)
class Connection:
    """What the status line says: the phase, the last error, since when the data is old."""

    phase: Phase
    error: str = ""
    stale_since: datetime | None = None
    ever_live: bool = False

    def line(self, address: str) -> str:
        """The state in words, as an analyst reads it."""
        if self.phase is Phase.LIVE:
            return "live"
        if self.phase is Phase.CONNECTING:
            words = f"connecting to {address}"
        elif self.phase is Phase.LOADING:
            words = "loading the queue"
        else:
            words = f"reconnecting: {self.error}"
        if self.stale_since is not None:
            words += f" · out of date since {clock(self.stale_since)}"
        elif self.phase is Phase.RECONNECTING and not self.ever_live:
            words += " · no data yet"
        return words


def _order(d: decision_pb2.Decision) -> tuple[int, int, int, str]:
    return (d.priority, d.created_at.seconds, d.created_at.nanos, d.analysis_id)


class QueueView:
    """The open set, folded from snapshot and changes; swapped in whole at each snapshot.

    Each connection starts with a fresh snapshot, gathered apart and shown only once it is
    complete: until then the screen keeps the last known queue (marked out of date), never
    a half-loaded one.
    """

    def __init__(self) -> None:
        self.items: dict[str, decision_pb2.Decision] = {}
        self._incoming: dict[str, decision_pb2.Decision] = {}
        self.connection = Connection(Phase.CONNECTING)
        self.last_change = ""

    @property
    def live(self) -> bool:
        """Whether the queue shown is the server's current one."""
        return self.connection.phase is Phase.LIVE

    def ordered(self) -> list[decision_pb2.Decision]:
        """Most urgent first, then oldest first."""
        return sorted(self.items.values(), key=_order)

    def connecting(self) -> None:
        """A new stream is being opened: its snapshot starts afresh."""
        self._incoming = {}

    def interrupted(self, error: str, *, now: datetime | None = None) -> None:
        """The stream broke (or never opened) with this error."""
        c = self.connection
        # Out of date from the moment the live stream broke, not from each later retry.
        stale = (now or datetime.now(UTC)) if c.phase is Phase.LIVE else c.stale_since
        self.connection = Connection(Phase.RECONNECTING, error, stale, c.ever_live)
        self._incoming = {}

    def apply(self, change: PendingChange) -> None:
        """Folds one change into the view."""
        c = self.connection
        if change.kind == "resync":
            self._incoming = {}
            self.connection = Connection(Phase.LOADING, "", c.stale_since, c.ever_live)
            return
        if c.phase is not Phase.LIVE:
            if change.kind == "snapshot_complete":
                self.items, self._incoming = self._incoming, {}
                self.connection = Connection(Phase.LIVE, ever_live=True)
                return
            self.connection = Connection(Phase.LOADING, "", c.stale_since, c.ever_live)
            target = self._incoming
        else:
            target = self.items
        if change.kind == "removed":
            target.pop(change.analysis_id, None)
            status = decision_pb2.DecisionStatus.Name(change.final_status)  # type: ignore[arg-type]
            self.last_change = (
                f"{change.analysis_id} left the queue ({status.removeprefix('DECISION_STATUS_')})"
            )
        elif change.decision is not None:
            known = target.get(change.decision.analysis_id)
            if known is not None and known.version > change.decision.version:
                return  # a reply to our own call already showed a newer version
            target[change.decision.analysis_id] = change.decision
            if target is self.items:
                self.last_change = f"{change.decision.analysis_id} {change.kind}"

    def merge(self, decision: decision_pb2.Decision) -> None:
        """Folds in a decision a call of ours returned, unless the stream already has newer."""
        known = self.items.get(decision.analysis_id)
        if known is not None and known.version >= decision.version:
            return
        if decision.status in TERMINAL:
            self.items.pop(decision.analysis_id, None)
        elif known is not None:
            self.items[decision.analysis_id] = decision
