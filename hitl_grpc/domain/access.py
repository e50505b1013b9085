"""Whether an account, as stored now, still admits the bearer of an access token."""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from hitl_grpc.domain import errors
from hitl_grpc.domain.values import Account, AccountCheck, Principal, Role

SESSION_ENDED: Final = "session ended: sign in again"


def admitted(
    found: tuple[Account, bool] | None,
    *,
    generation: int,
    roles: Collection[Role] | None = None,
    method: str = "",
) -> Account:
    """The account if it admits the token; else the error that refuses the call.

    `found` is the account and whether the token's session was revoked, read together.
    The stored role is the one that counts: a role change takes effect at once.
    """
    if found is None:
        raise errors.Unauthenticated("invalid token")
    account, session_revoked = found
    if not account.user.active:
        raise errors.PermissionDenied("account is deactivated")
    if session_revoked or account.generation != generation:
        raise errors.Unauthenticated(SESSION_ENDED)
    if roles is not None and account.user.role not in roles:
        raise errors.PermissionDenied(f"role {account.user.role.name} may not call {method}")
    return account


def checked_principal(found: tuple[Account, bool] | None, check: AccountCheck) -> Principal:
    """The caller behind a folded check, once the stored account admits it."""
    account = admitted(found, generation=check.generation, roles=check.roles, method=check.method)
    if account.user.username != check.username:  # pragma: no cover - names never change
        raise errors.Unauthenticated("invalid token")
    return Principal(
        user_id=account.user.id,
        username=account.user.username,
        role=account.user.role,
        token_id=check.token_id,
        peer=check.peer,
        session_id=check.session_id,
    )
