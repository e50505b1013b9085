"""Refresh tokens: only their hashes are stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.ports import StoredRefreshToken
from hitl_grpc.domain.values import UserId
from hitl_grpc.store.codec import aware
from hitl_grpc.store.prepared import Prepared
from hitl_grpc.store.tables import refresh_tokens

# Every sign-in and refresh stores one (store/prepared.py).
_ADD = Prepared(
    insert(refresh_tokens).values(
        {
            name: bindparam("b_" + name)
            for name in ("id", "user_id", "family_id", "token_hash", "issued_at", "expires_at")
        }
    )
)


class RefreshTokenRepository:
    """Refresh tokens in the caller's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def add(
        self,
        *,
        token_id: str,
        user_id: UserId,
        family_id: str,
        token_hash: str,
        issued_at: datetime,
        expires_at: datetime,
    ) -> None:
        """Stores a newly issued refresh token."""
        params = {
            "b_id": token_id,
            "b_user_id": user_id,
            "b_family_id": family_id,
            "b_token_hash": token_hash,
            "b_issued_at": issued_at,
            "b_expires_at": expires_at,
        }
        await _ADD.rows(self._conn, params)

    async def by_hash(self, token_hash: str) -> StoredRefreshToken | None:
        """The token with this hash, if any."""
        stmt = select(refresh_tokens).where(refresh_tokens.c.token_hash == token_hash)
        row = (await self._conn.execute(stmt)).first()
        if row is None:
            return None
        expires_at = aware(row.expires_at)
        assert expires_at is not None
        return StoredRefreshToken(
            id=row.id,
            user_id=UserId(row.user_id),
            family_id=row.family_id,
            expires_at=expires_at,
            rotated_at=aware(row.rotated_at),
            revoked_at=aware(row.revoked_at),
        )

    async def rotate(self, token_id: str, at: datetime) -> bool:
        """Marks a live token as used; False if it was already rotated or revoked.

        One conditional UPDATE: of two requests presenting the same token, one wins and
        the other is reuse.
        """
        stmt = (
            update(refresh_tokens)
            .where(
                refresh_tokens.c.id == token_id,
                refresh_tokens.c.rotated_at.is_(None),
                refresh_tokens.c.revoked_at.is_(None),
            )
            .values(rotated_at=at)
        )
        return (await self._conn.execute(stmt)).rowcount == 1

    async def revoke_family(self, family_id: str, at: datetime) -> int:
        """Revokes every token of one sign-in session."""
        stmt = (
            update(refresh_tokens)
            .where(refresh_tokens.c.family_id == family_id, refresh_tokens.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return (await self._conn.execute(stmt)).rowcount

    async def revoke_user_sessions(
        self, user_id: UserId, at: datetime, *, keep_family: str = ""
    ) -> int:
        """Revokes every session of a user, except one family if given."""
        stmt = (
            update(refresh_tokens)
            .where(
                refresh_tokens.c.user_id == user_id,
                refresh_tokens.c.revoked_at.is_(None),
                refresh_tokens.c.family_id != keep_family,
            )
            .values(revoked_at=at)
        )
        return (await self._conn.execute(stmt)).rowcount
