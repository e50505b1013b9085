"""The open queue: its order, filters, page cursors, and the statistics over it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

from hitl_grpc.domain import lifecycle, opaque, validation
from hitl_grpc.domain.errors import FieldViolation, InvalidField
from hitl_grpc.domain.values import AnalysisId, Decision, Priority, Status

PAGE_SIZE_DEFAULT: Final = 50
PAGE_SIZE_MAX: Final = 500
# Rows read from the database at a time while a page fills: a default page is one read,
# and a page of large decisions holds at most this many beyond what fits.
READ_ROWS_MAX: Final = PAGE_SIZE_DEFAULT + 1
# Base64 of the JSON cursor with a 128-character id of 4-byte characters is ~900 bytes.
TOKEN_MAX: Final = 2048


@dataclass(frozen=True)
class QueueKey:
    """A decision's place in the queue: priority, then age, then id as the tiebreak.

    None of these ever change after submission, so a cursor taken from one page
    still marks the same place however the queue changes around it.
    """

    priority: Priority
    created_at: datetime
    analysis_id: AnalysisId

    @classmethod
    def of(cls, decision: Decision) -> QueueKey:
        """The key of a decision."""
        return cls(decision.analysis.priority, decision.created_at, decision.analysis_id)


class PageEntry(NamedTuple):
    """A decision on a page as its version and place, read without the rest of its row."""

    analysis_id: str
    version: int
    priority: int
    # Aware, in whatever zone the store reads it.
    created_at: datetime

    def key(self) -> QueueKey:
        """Its place in the queue, as a cursor names it."""
        return QueueKey(
            Priority(self.priority), self.created_at.astimezone(UTC), AnalysisId(self.analysis_id)
        )


@dataclass(frozen=True)
class QueueFilter:
    """Which open decisions to list; empty means all."""

    priorities: frozenset[Priority] = frozenset()
    statuses: frozenset[Status] = frozenset()

    def fingerprint(self) -> str:
        """Ties a cursor to the filter it was issued for."""
        raw = f"{sorted(self.priorities)}|{sorted(self.statuses)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PageRequest:
    """A validated ListPendingDecisions request."""

    filter: QueueFilter
    size: int
    after: QueueKey | None

    def token_after(self, key: QueueKey | None) -> str:
        """The token of the page that starts after `key` (an item this page holds)."""
        assert key is not None, "a page that ends early holds at least one item"
        return encode_cursor(key, self.filter)


def parse_page_request(
    *, priorities: list[int], statuses: list[int], page_size: int, page_token: str
) -> PageRequest:
    """Filters, page size and cursor, or InvalidField listing every bad one."""
    problems: list[FieldViolation] = []
    wanted_priorities: set[Priority] = set()
    for i, raw in enumerate(priorities):
        try:
            wanted_priorities.add(Priority(raw))
        except ValueError:
            problems.append(FieldViolation(f"priorities[{i}]", "must be a known PRIORITY_*"))
    wanted_statuses: set[Status] = set()
    for i, raw in enumerate(statuses):
        try:
            status = Status(raw)
        except ValueError:
            status = None
        if status not in lifecycle.OPEN:
            problems.append(
                FieldViolation(f"statuses[{i}]", "must be PENDING, IN_REVIEW or ESCALATED")
            )
        else:
            wanted_statuses.add(status)
    if page_size < 0:
        problems.append(FieldViolation("page_size", "must not be negative"))
    queue_filter = QueueFilter(frozenset(wanted_priorities), frozenset(wanted_statuses))
    after = None
    if page_token:
        try:
            after = decode_cursor(page_token, queue_filter)
        except InvalidField as err:
            problems.extend(err.violations)
    if problems:
        raise InvalidField(problems)
    size = min(page_size or PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
    return PageRequest(queue_filter, size, after)


def encode_cursor(key: QueueKey, queue_filter: QueueFilter) -> str:
    """An opaque token for the page after `key`."""
    body = {
        "p": int(key.priority),
        "c": key.created_at.astimezone(UTC).isoformat(),
        "i": key.analysis_id,
        "f": queue_filter.fingerprint(),
    }
    return opaque.encode(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode())


def decode_cursor(token: str, queue_filter: QueueFilter) -> QueueKey:
    """The key a token was issued for, or InvalidField on page_token for anything else."""
    # Every token this service issues is far shorter; longer ones are not even decoded.
    if len(token) > TOKEN_MAX:
        raise _not_ours()
    raw = opaque.decode(token)
    if raw is None:
        raise _not_ours()
    try:
        # A deeply nested forgery ends json's recursion: still just a bad token.
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise _not_ours() from None
    if not isinstance(body, dict):
        raise _not_ours()
    priority, created, analysis_id, fingerprint = (body.get(k) for k in ("p", "c", "i", "f"))
    if not (
        type(priority) is int
        and isinstance(created, str)
        and isinstance(analysis_id, str)
        and isinstance(fingerprint, str)
    ):
        raise _not_ours()
    try:
        key = QueueKey(
            Priority(priority),
            datetime.fromisoformat(created),
            validation.parse_analysis_id(analysis_id, "page_token"),
        )
    except (ValueError, InvalidField):
        raise _not_ours() from None
    # Issued in UTC only: any other offset (or none) is forged, and might not even
    # convert (year 9999 at -14:00).
    if key.created_at.utcoffset() != timedelta(0):
        raise _not_ours()
    if fingerprint != queue_filter.fingerprint():
        raise InvalidField.one("page_token", "was issued for other filters")
    return key


def _not_ours() -> InvalidField:
    return InvalidField.one("page_token", "is not a token this service issued")


@dataclass(frozen=True)
class WindowStats:
    """Decisions submitted in a window, and the verdicts made in it."""

    submitted: int = 0
    approved: int = 0
    rejected: int = 0
    escalated: int = 0
    expired: int = 0
    decided: int = 0
    avg_time_to_decision: timedelta | None = None
    p50_time_to_decision: timedelta | None = None
    p90_time_to_decision: timedelta | None = None
    sla_breaches: int = 0


@dataclass(frozen=True)
class QueueStats:
    """The queue now, and its history over the last 24 hours and all time."""

    pending_by_priority: Mapping[Priority, int] = field(default_factory=dict)
    pending: int = 0
    in_review: int = 0
    escalated: int = 0
    # How long the oldest open decision has waited, by the database's clock.
    oldest_open_age: timedelta | None = None
    last_24h: WindowStats = WindowStats()
    all_time: WindowStats = WindowStats()
