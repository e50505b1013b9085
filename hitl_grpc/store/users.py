"""Accounts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain import errors
from hitl_grpc.domain.values import Account, Role, User, UserId, username_key
from hitl_grpc.store.codec import aware
from hitl_grpc.store.tables import users


def account_from_row(row: Any) -> Account:
    """An account from a users row."""
    created_at = aware(row.created_at)
    assert created_at is not None
    return Account(
        user=User(
            id=UserId(row.id),
            username=row.username,
            role=Role(row.role),
            email=row.email,
            full_name=row.full_name,
            active=row.active,
            mfa_enabled=row.mfa_enabled,
            created_at=created_at,
        ),
        password_hash=row.password_hash,
        mfa_secret=row.mfa_secret,
        mfa_last_step=row.mfa_last_step,
    )


class UserRepository:
    """Accounts, read and written in the caller's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, user_id: UserId) -> Account | None:
        """The account with this id, if any."""
        row = (await self._conn.execute(select(users).where(users.c.id == user_id))).first()
        return account_from_row(row) if row else None

    async def by_username(self, username: str) -> Account | None:
        """The account whose name is this one, compared NFKC case-insensitively."""
        stmt = select(users).where(users.c.username_key == username_key(username))
        row = (await self._conn.execute(stmt)).first()
        return account_from_row(row) if row else None

    async def add(self, account: Account) -> None:
        """Stores a new account; a taken name is AlreadyExists."""
        u = account.user
        try:
            async with self._conn.begin_nested():
                await self._conn.execute(
                    insert(users).values(
                        id=u.id,
                        username=u.username,
                        username_key=username_key(u.username),
                        password_hash=account.password_hash,
                        role=int(u.role),
                        email=u.email,
                        full_name=u.full_name,
                        active=u.active,
                        mfa_enabled=u.mfa_enabled,
                        created_at=u.created_at,
                        updated_at=u.created_at,
                    )
                )
        except IntegrityError as exc:
            raise errors.AlreadyExists(f"username {u.username!r} is taken") from exc

    async def count(self) -> int:
        """How many accounts exist."""
        return int((await self._conn.execute(select(func.count()).select_from(users))).scalar_one())

    async def set_password_hash(self, user_id: UserId, password_hash: str) -> None:
        """Replaces a password hash (a rehash with new parameters, or a new password)."""
        await self._conn.execute(
            update(users).where(users.c.id == user_id).values(password_hash=password_hash)
        )
