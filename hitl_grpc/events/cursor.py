"""Watch cursors: where a stream stands in the event log, as an opaque string."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

from hitl_grpc.domain.errors import InvalidField
from hitl_grpc.store.outbox import EventPosition, Snapshot

_PREFIX: Final = "v1:"
# Sent on snapshot items: resuming from inside a snapshot starts a new one.
SNAPSHOT_CURSOR: Final = "v1:snapshot"
_MAX_LEN: Final = 8192


@dataclass(frozen=True)
class Cursor:
    """Everything up to `after` has been seen, plus, on PostgreSQL, the events of the
    transactions in [after.txid, xmax) outside `xip` that a snapshot had already shown."""

    after: EventPosition
    xmax: int = 0
    xip: frozenset[int] = frozenset()

    @classmethod
    def of_snapshot(cls, snapshot: Snapshot) -> Cursor:
        """The cursor right after what a snapshot of the open set reflected."""
        if snapshot.xmax <= snapshot.after[0]:
            return cls(snapshot.after)
        return cls(snapshot.after, snapshot.xmax, frozenset(snapshot.xip))

    def admits(self, key: EventPosition) -> bool:
        """Whether an event at `key` is after this cursor (not yet seen)."""
        if key <= self.after:
            return False
        return not (key[0] < self.xmax and key[0] not in self.xip)

    def advanced(self, key: EventPosition) -> Cursor:
        """The cursor once the event at `key` (or everything up to it) has been seen."""
        if key <= self.after:
            return self
        if key[0] >= self.xmax:
            return Cursor(key)
        return Cursor(key, self.xmax, self.xip)

    def encode(self) -> str:
        """The opaque wire form."""
        parts = f"{self.after[0]}.{self.after[1]}"
        if self.xmax:
            parts += f".{self.xmax}." + ",".join(str(x) for x in sorted(self.xip))
        return _PREFIX + base64.urlsafe_b64encode(parts.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, raw: str, field: str = "resume_cursor") -> Cursor | None:
        """A cursor; None for the snapshot cursor (start over). InvalidField if malformed."""
        if raw == SNAPSHOT_CURSOR:
            return None
        bad = InvalidField.one(field, "not a cursor issued by this service")
        if not raw.startswith(_PREFIX) or len(raw) > _MAX_LEN:
            raise bad
        body = raw[len(_PREFIX) :]
        try:
            text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
            fields = text.split(".")
            if len(fields) == 2:
                after = (int(fields[0]), int(fields[1]))
                xmax, xip = 0, frozenset[int]()
            elif len(fields) == 4:
                after = (int(fields[0]), int(fields[1]))
                xmax = int(fields[2])
                xip = frozenset(int(x) for x in fields[3].split(",") if x)
            else:
                raise ValueError(text)
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise bad from None
        if min(after) < 0 or xmax < 0:
            raise bad
        return cls(after, xmax, xip)
