"""This replica's clock, as a dependency: token lifetimes, lockouts, event retention.

Decisions that replicas must agree on (SLA escalation, expiry, leases) never read it:
they take the database's clock, in the statement that needs it (store/decisions.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Tells the current time as an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)
