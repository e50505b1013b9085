"""Accounts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain import errors
from hitl_grpc.domain.ports import UserChanges
from hitl_grpc.domain.values import Account, Role, User, UserId, username_key
from hitl_grpc.store.codec import NUL, aware
from hitl_grpc.store.prepared import Prepared
from hitl_grpc.store.tables import refresh_tokens, users

# Every sign-in reads its account by name (store/prepared.py).
_BY_KEY = Prepared(select(users).where(users.c.username_key == bindparam("key")))
_BY_ID = Prepared(select(users).where(users.c.id == bindparam("id")))
_BY_ID_LOCKED = Prepared(select(users).where(users.c.id == bindparam("id")).with_for_update())
_SET_HASH = Prepared(
    update(users).where(users.c.id == bindparam("b_id")).values(password_hash=bindparam("b_hash"))
)


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
            certificate_subject=row.certificate_subject or "",
        ),
        password_hash=row.password_hash,
        mfa_secret=row.mfa_secret,
        mfa_last_step=row.mfa_last_step,
        mfa_pending_secret=row.mfa_pending_secret,
        generation=row.generation,
    )


def _taken(exc: IntegrityError, username: str) -> errors.AlreadyExists:
    """Which unique key a write collided with: the username, or the certificate subject."""
    if "certificate_subject" in str(exc.orig):
        return errors.AlreadyExists("another account is bound to that certificate subject")
    return errors.AlreadyExists(f"username {username!r} is taken")


class UserRepository:
    """Accounts, read and written in the caller's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def get(self, user_id: UserId) -> Account | None:
        """The account with this id, if any."""
        if NUL in user_id:
            return None  # no stored id holds it, and PostgreSQL refuses it as a parameter
        rows = await _BY_ID.rows(self._conn, {"id": user_id})
        return account_from_row(rows[0]) if rows else None

    async def get_for_update(self, user_id: UserId) -> Account | None:
        """The account, its row locked until the transaction ends (PostgreSQL)."""
        if NUL in user_id:
            return None
        rows = await _BY_ID_LOCKED.rows(self._conn, {"id": user_id})
        return account_from_row(rows[0]) if rows else None

    async def with_session(self, user_id: UserId, session_id: str) -> tuple[Account, bool] | None:
        """The account and whether the session (refresh family) was revoked, in one query."""
        revoked = exists().where(
            and_(
                refresh_tokens.c.family_id == session_id,
                refresh_tokens.c.revoked_at.is_not(None),
            )
        )
        stmt = select(users, revoked.label("session_revoked")).where(users.c.id == user_id)
        row = (await self._conn.execute(stmt)).first()
        return (account_from_row(row), bool(row.session_revoked)) if row else None

    async def has_session(self, user_id: UserId, session_id: str) -> bool:
        """Whether this session (refresh family) of the account was ever opened."""
        stmt = select(
            exists().where(
                refresh_tokens.c.user_id == user_id, refresh_tokens.c.family_id == session_id
            )
        )
        return bool((await self._conn.execute(stmt)).scalar_one())

    async def by_username(self, username: str) -> Account | None:
        """The account whose name is this one, compared NFKC case-insensitively."""
        if NUL in username:
            return None
        rows = await _BY_KEY.rows(self._conn, {"key": username_key(username)})
        return account_from_row(rows[0]) if rows else None

    async def by_certificate_subject(self, subject: str) -> Account | None:
        """The account bound to this client-certificate subject, if any."""
        if NUL in subject or not subject:
            return None
        stmt = select(users).where(users.c.certificate_subject == subject)
        row = (await self._conn.execute(stmt)).first()
        return account_from_row(row) if row else None

    async def list_page(self, after_key: str | None, limit: int) -> list[Account]:
        """Accounts in username order, after the given username key."""
        stmt = select(users).order_by(users.c.username_key).limit(limit)
        if after_key is not None:
            stmt = stmt.where(users.c.username_key > after_key)
        return [account_from_row(row) for row in await self._conn.execute(stmt)]

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
                        certificate_subject=u.certificate_subject or None,
                    )
                )
        except IntegrityError as exc:
            raise _taken(exc, u.username) from exc

    async def count(self) -> int:
        """How many accounts exist."""
        return int((await self._conn.execute(select(func.count()).select_from(users))).scalar_one())

    async def set_password_hash(self, user_id: UserId, password_hash: str) -> None:
        """Replaces a password hash (a rehash with new parameters, or a new password)."""
        await _SET_HASH.rows(self._conn, {"b_id": user_id, "b_hash": password_hash})

    async def update(self, user_id: UserId, changes: UserChanges, at: datetime) -> Account | None:
        """Applies the changes; None if there is no such account."""
        values: dict[str, Any] = {"updated_at": at}
        if changes.role is not None:
            values["role"] = int(changes.role)
        if changes.active is not None:
            values["active"] = changes.active
        if changes.email is not None:
            values["email"] = changes.email
        if changes.full_name is not None:
            values["full_name"] = changes.full_name
        if changes.password_hash is not None:
            values["password_hash"] = changes.password_hash
        if changes.certificate_subject is not None:
            values["certificate_subject"] = changes.certificate_subject or None
        if changes.bump_generation:
            values["generation"] = users.c.generation + 1
        stmt = update(users).where(users.c.id == user_id).values(**values).returning(*users.c)
        try:
            async with self._conn.begin_nested():
                row = (await self._conn.execute(stmt)).first()
        except IntegrityError as exc:
            raise _taken(exc, "") from exc
        return account_from_row(row) if row else None

    async def lock_active_admins(self) -> list[UserId]:
        """The active admins, their rows locked in id order.

        Two transactions demoting two different admins both lock this whole set first, in
        the same order: the second waits, then sees the first's change, so they can't both
        conclude that another admin remains. SQLite's BEGIN IMMEDIATE serializes them anyway.
        """
        stmt = (
            select(users.c.id)
            .where(users.c.role == int(Role.ADMIN), users.c.active.is_(True))
            .order_by(users.c.id)
            .with_for_update()
        )
        return [UserId(r.id) for r in await self._conn.execute(stmt)]

    async def set_mfa_pending(self, user_id: UserId, secret: str | None, at: datetime) -> None:
        """Stores the secret of an enrolment not yet confirmed."""
        await self._conn.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(mfa_pending_secret=secret, updated_at=at)
        )

    async def enable_mfa(self, user_id: UserId, secret: str, step: int, at: datetime) -> None:
        """Turns MFA on with the confirmed secret; the confirming step counts as used."""
        await self._conn.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(
                mfa_enabled=True,
                mfa_secret=secret,
                mfa_pending_secret=None,
                mfa_last_step=step,
                updated_at=at,
            )
        )

    async def disable_mfa(self, user_id: UserId, at: datetime) -> None:
        """Turns MFA off and forgets its secrets."""
        await self._conn.execute(
            update(users)
            .where(users.c.id == user_id)
            .values(
                mfa_enabled=False,
                mfa_secret=None,
                mfa_pending_secret=None,
                mfa_last_step=None,
                updated_at=at,
            )
        )

    async def claim_mfa_step(self, user_id: UserId, step: int) -> bool:
        """Records a TOTP step as used; False if it (or a later one) already was.

        One conditional UPDATE, so two requests racing with the same code have one winner.
        """
        stmt = (
            update(users)
            .where(
                users.c.id == user_id,
                or_(users.c.mfa_last_step.is_(None), users.c.mfa_last_step < step),
            )
            .values(mfa_last_step=step)
        )
        result = await self._conn.execute(stmt)
        return result.rowcount == 1
