"""The caller of the current RPC, set by the auth interceptor."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from hitl_grpc.domain.errors import Unauthenticated
from hitl_grpc.domain.values import AccountCheck, Principal, User


@dataclass(frozen=True)
class Access:
    """An access token checked against the account as it is now."""

    principal: Principal
    # What was left of the token's lifetime when it was checked.
    expires_in_s: float
    # The account as the check read it, for a method that answers with it (GetCurrentUser).
    user: User | None = None


# The one piece of module-level state: per-task, so concurrent RPCs never see each other's.
_current: ContextVar[Principal | None] = ContextVar("hitl_principal", default=None)
_peer: ContextVar[str] = ContextVar("hitl_peer", default="")
_user: ContextVar[User | None] = ContextVar("hitl_checked_user", default=None)
_deferred: ContextVar[AccountCheck | None] = ContextVar("hitl_deferred_check", default=None)


def current_principal() -> Principal:
    """The authenticated caller; a public method has none."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("authentication required")
    return principal


def current_principal_or_none() -> Principal | None:
    """The authenticated caller, or None: a public method, or not authenticated (yet)."""
    return _current.get()


def current_peer() -> str:
    """The client address of the current RPC."""
    return _peer.get()


def checked_user() -> User | None:
    """The caller's account as this call's access check read it, if it did."""
    return _user.get()


def deferred_check() -> AccountCheck | None:
    """The access check this call's own statement must make, if the interceptor left it."""
    return _deferred.get()


def bind(principal: Principal | None, peer: str, user: User | None = None) -> None:
    """Sets the caller (and the account its check read) for the rest of the current task."""
    _current.set(principal)
    _peer.set(peer)
    _user.set(user)
    _deferred.set(None)


def bind_deferred(check: AccountCheck, peer: str) -> None:
    """Leaves the caller's check to the call's statement: until a check has admitted it,
    the call has no principal (current_principal() refuses), so nothing can act unchecked."""
    _current.set(None)
    _peer.set(peer)
    _user.set(None)
    _deferred.set(check)
