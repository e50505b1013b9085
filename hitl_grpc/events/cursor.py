"""Watch cursors: a position in the event log, as an opaque string."""

from __future__ import annotations

import re
from typing import Final

from hitl_grpc.domain import opaque
from hitl_grpc.domain.errors import InvalidField, OutOfRange

_PREFIX: Final = "v2:"
# Issued before appends were serialized: "v1:" + base64("txid.position") or, for a
# snapshot, base64("xmin.0.xmax.xip,..."). SQLite's txid was always 0.
_LEGACY_PREFIX: Final = "v1:"
# Sent on snapshot items: resuming from inside a snapshot starts a new one.
SNAPSHOT_CURSOR: Final = "v1:snapshot"
POSITION_MAX: Final = 2**63 - 1  # the positions column is a signed 64-bit integer
_MAX_LEN: Final = 64
_DIGITS: Final = re.compile(r"[0-9]{1,19}")
RESYNC: Final = "cursor predates this server's event order; start again without a cursor"


def encode(position: int) -> str:
    """The opaque wire form of 'every event up to `position` has been seen'."""
    return _PREFIX + opaque.encode(str(position).encode())


def decode(raw: str, field: str = "resume_cursor") -> int | None:
    """The position a cursor stands at; None for the snapshot cursor (start over).

    InvalidField if it was not issued by this service; OutOfRange for a cursor of the
    old (txid, position) order, which cannot be mapped onto positions.
    """
    if raw == SNAPSHOT_CURSOR:
        return None
    bad = InvalidField.one(field, "not a cursor issued by this service")
    if len(raw) > _MAX_LEN or not raw.startswith((_PREFIX, _LEGACY_PREFIX)):
        raise bad
    text = opaque.decode_text(raw[3:], "ascii")
    if text is None:
        raise bad
    fields = text.split(".")
    if raw.startswith(_LEGACY_PREFIX):
        if len(fields) not in (2, 4) or not all(_DIGITS.fullmatch(f) for f in fields[:2]):
            raise bad
        if len(fields) == 4 or int(fields[0]) != 0:
            raise OutOfRange(RESYNC)
        fields = fields[1:]
    if len(fields) != 1 or not _DIGITS.fullmatch(fields[0]):
        raise bad
    position = int(fields[0])
    if position > POSITION_MAX:
        raise bad
    return position
