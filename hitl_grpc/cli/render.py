"""How commands over the API print: aligned tables for people, the proto JSON for scripts.

Tables name enums by their short lower-case name (`critical`, `in_review`) and show zero
counts and false flags like any other value. Text from the server is shown as text: control
characters (terminal escapes among them) are written as visible escapes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

# C0 and C1 controls and DEL, but tab; and the bidirectional overrides.
_CONTROL: Final = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def plain(text: str) -> str:
    """Server text made safe for a terminal line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def short(enum: EnumDescriptor, value: int) -> str:
    """An enum value's name without its prefix, lower case: PRIORITY_HIGH -> high."""
    number = enum.values_by_number.get(value)
    if number is None:
        return str(value)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return number.name.removeprefix(prefix).lower()


def values(enum: EnumDescriptor) -> list[str]:
    """Every short name of an enum but _UNSPECIFIED, in wire order."""
    return [short(enum, v.number) for v in enum.values if v.number != 0]


def parse(enum: EnumDescriptor, name: str) -> int:
    """The number of a short (or full) enum name."""
    wanted = name.strip().lower()
    for value in enum.values:
        if value.number and wanted in (short(enum, value.number), value.name.lower()):
            return int(value.number)
    raise ValueError(f"{name!r} is not one of {', '.join(values(enum))}")


def when(stamp: timestamp_pb2.Timestamp) -> str:
    """A time in UTC to the second, or '-' when unset."""
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span(delta: timedelta) -> str:
    """A duration as people read it: 45s, 12m, 3h05m, 2d04h."""
    seconds = int(abs(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def age(stamp: timestamp_pb2.Timestamp, now: datetime) -> str:
    """How long ago a time was."""
    if not stamp.seconds:
        return "-"
    return span(now - stamp.ToDatetime(tzinfo=UTC))


def until(stamp: timestamp_pb2.Timestamp, now: datetime) -> str:
    """Time left until a deadline ('in 12m'), or how long it is past ('over 3m')."""
    if not stamp.seconds:
        return "-"
    left = stamp.ToDatetime(tzinfo=UTC) - now
    return f"in {span(left)}" if left >= timedelta(0) else f"over {span(left)}"


def duration(value: duration_pb2.Duration) -> str:
    """A proto Duration as people read it."""
    return span(value.ToTimedelta())


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Left-aligned columns two spaces apart, a header line first; no trailing spaces."""
    cells = [[str(h) for h in headers]] + [[plain(str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def fields(pairs: Iterable[tuple[str, object]]) -> str:
    """`name: value` lines with the values aligned; an empty name continues the line above."""
    rows = [(name, plain(str(value))) for name, value in pairs]
    width = max((len(name) for name, _ in rows), default=0) + 1
    return "\n".join(
        f"{(name + ':' if name else '').ljust(width)} {value}".rstrip() for name, value in rows
    )


def to_dict(message: Message) -> dict[str, Any]:
    """The proto JSON mapping with every field present (zeros and false too), field names
    as in the .proto, enums by their full wire name."""
    return MessageToDict(
        message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )


def dumps(value: Message | Sequence[Message] | dict[str, Any]) -> str:
    """A message, a list of them, or a dict of plain values as JSON."""
    if isinstance(value, Message):
        body: Any = to_dict(value)
    elif isinstance(value, dict):
        body = value
    else:
        body = [to_dict(m) for m in value]
    return json.dumps(body, ensure_ascii=False, indent=2)
