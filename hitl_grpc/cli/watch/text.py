"""Decision text as the screen shows it: literal, one cell per column, times as countdowns.

Every string from the server is treated as hostile: rich or textual markup must stay
literal (the callers wrap it in `rich.text.Text`, never a markup string), and control and
format characters (ESC sequences, bidi overrides, zero-width marks) are shown as escapes
so they can neither drive the terminal nor hide what an analyst is approving.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, timedelta
from typing import Final

from rich.cells import cell_len

ELLIPSIS: Final = "…"
# Cc: C0/C1 controls (ESC, BEL, CR...); Cf: format (bidi overrides, zero-width);
# Zl/Zp: line and paragraph separators, which would break a row; Cs/Co/Cn: surrogates,
# private use and unassigned code points, which terminals draw unpredictably.
_ESCAPED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def shown(value: str, *, multiline: bool = False) -> str:
    """The text with every control or format character spelled out as an escape.

    With `multiline`, newlines stay (a forensic summary keeps its paragraphs).
    """
    out: list[str] = []
    for char in value:
        if multiline and char == "\n":
            out.append(char)
        elif unicodedata.category(char) in _ESCAPED_CATEGORIES:
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)


def cut(value: str, width: int) -> str:
    """At most `width` terminal cells of a single-line text, ending in an ellipsis if cut."""
    text = shown(value)
    if cell_len(text) <= width:
        return text
    if width <= 0:
        return ""
    kept: list[str] = []
    used = 0
    for char in text:
        size = cell_len(char)
        if used + size > width - 1:
            break
        kept.append(char)
        used += size
    return "".join(kept) + ELLIPSIS


def span(delta: timedelta) -> str:
    """A non-negative duration in its two largest units: 45s, 12m05s, 3h04m, 2d03h."""
    total = max(int(delta.total_seconds()), 0)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


def countdown(deadline: datetime | None, now: datetime) -> str:
    """Time left until a deadline, or how long ago it passed."""
    if deadline is None:
        return "-"
    left = deadline - now
    if left.total_seconds() < 0:
        return f"over {span(-left)}"
    return span(left)


def clock(at: datetime) -> str:
    """A local wall-clock time, HH:MM:SS."""
    return at.astimezone().strftime("%H:%M:%S")
