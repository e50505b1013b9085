"""MFA backup codes: hashes only, each usable once."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.values import UserId
from hitl_grpc.store.tables import mfa_backup_codes


class BackupCodeRepository:
    """Backup codes in the caller's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def replace(self, user_id: UserId, code_hashes: list[str]) -> None:
        """Drops a user's codes and stores new ones (an empty list only drops)."""
        await self._conn.execute(
            delete(mfa_backup_codes).where(mfa_backup_codes.c.user_id == user_id)
        )
        if code_hashes:
            await self._conn.execute(
                insert(mfa_backup_codes),
                [{"user_id": user_id, "code_hash": h} for h in code_hashes],
            )

    async def use(self, user_id: UserId, code_hash: str, at: datetime) -> bool:
        """Spends an unused code; one conditional UPDATE, so a code works exactly once."""
        stmt = (
            update(mfa_backup_codes)
            .where(
                mfa_backup_codes.c.user_id == user_id,
                mfa_backup_codes.c.code_hash == code_hash,
                mfa_backup_codes.c.used_at.is_(None),
            )
            .values(used_at=at)
        )
        return (await self._conn.execute(stmt)).rowcount == 1
