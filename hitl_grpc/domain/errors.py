"""Domain errors: what went wrong, in the service's own words; api/errors.py maps them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class DomainError(Exception):
    """Base of every error a client may see; its message is safe to send."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request."""

    field: str
    description: str


class InvalidField(DomainError):
    """One or more request fields are invalid; all of them are listed."""

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        self.violations = tuple(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {summary}")

    @classmethod
    def one(cls, field: str, description: str) -> InvalidField:
        """A single bad field."""
        return cls([FieldViolation(field, description)])


class Unauthenticated(DomainError):
    """No credentials, or credentials that are malformed, expired or revoked."""


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""


class NotFound(DomainError):
    """The named thing does not exist (or is not visible to the caller)."""


class AlreadyExists(DomainError):
    """A unique name or id is taken by something else."""


class WrongState(DomainError):
    """The thing exists but is not in a state that allows this."""


class VersionConflict(DomainError):
    """The expected version did not match: someone else changed it first."""


class RateLimited(DomainError):
    """Too many attempts; retry after the given delay."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ResourceExhausted(DomainError):
    """A bound was reached: a slow stream consumer, a too-large request."""


class OutOfRange(DomainError):
    """A cursor that is no longer retained; the client must resync."""


class Unavailable(DomainError):
    """A dependency (the database) is unreachable; the call may be retried."""
