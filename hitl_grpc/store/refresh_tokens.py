"""Refresh tokens: only their hashes are stored."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.values import UserId
from hitl_grpc.store.tables import refresh_tokens


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
        await self._conn.execute(
            insert(refresh_tokens).values(
                id=token_id,
                user_id=user_id,
                family_id=family_id,
                token_hash=token_hash,
                issued_at=issued_at,
                expires_at=expires_at,
            )
        )
