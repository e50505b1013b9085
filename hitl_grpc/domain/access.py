"""Whether an account, as stored now, still admits the bearer of an access token."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from hitl_grpc.domain import errors
from hitl_grpc.domain.values import Account, AccountCheck, Principal, Role, UserId

SESSION_ENDED: Final = "session ended: sign in again"


@dataclass(frozen=True)
class StoredAccess:
    """What an access check reads of an account and the token's session, in one statement."""

    user_id: UserId
    username: str
    role: Role
    active: bool
    generation: int
    # Whether the token's session (refresh-token family) was revoked.
    session_revoked: bool

    @classmethod
    def of(cls, account: Account, session_revoked: bool) -> StoredAccess:
        """The access part of a whole account."""
        user = account.user
        return cls(
            user.id, user.username, user.role, user.active, account.generation, session_revoked
        )


def judge(
    stored: StoredAccess | None,
    *,
    generation: int,
    roles: Collection[Role] | None = None,
    method: str = "",
) -> StoredAccess:
    """The stored access if it admits the token; else the error that refuses the call.

    The stored role is the one that counts: a role change takes effect at once.
    """
    if stored is None:
        raise errors.Unauthenticated("invalid token")
    if not stored.active:
        raise errors.PermissionDenied("account is deactivated")
    if stored.session_revoked or stored.generation != generation:
        raise errors.Unauthenticated(SESSION_ENDED)
    if roles is not None and stored.role not in roles:
        raise errors.PermissionDenied(f"role {stored.role.name} may not call {method}")
    return stored


def checked_principal(stored: StoredAccess | None, check: AccountCheck) -> Principal:
    """The caller behind a folded check, once the stored account admits it."""
    admitted = judge(stored, generation=check.generation, roles=check.roles, method=check.method)
    if admitted.username != check.username:  # pragma: no cover - names never change
        raise errors.Unauthenticated("invalid token")
    return Principal(
        user_id=admitted.user_id,
        username=admitted.username,
        role=admitted.role,
        token_id=check.token_id,
        peer=check.peer,
        session_id=check.session_id,
    )
