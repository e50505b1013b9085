"""Account operations: sign-in, the caller's identity, and creating accounts."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from hitl_grpc.auth.passwords import Passwords, check_new_password
from hitl_grpc.auth.tokens import ACCESS, TokenIssuer, hash_opaque, new_opaque_token
from hitl_grpc.domain import errors
from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.ports import UnitOfWork, UnitOfWorkFactory
from hitl_grpc.domain.values import (
    Account,
    AuditOutcome,
    AuditRecord,
    Principal,
    Role,
    User,
    UserId,
    parse_username,
)

LOGIN_FAILED = "invalid username or password"


@dataclass(frozen=True)
class TokenLifetimes:
    """How long each kind of token lives."""

    access: timedelta = timedelta(minutes=15)
    refresh: timedelta = timedelta(days=7)
    mfa_challenge: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class IssuedTokens:
    """An access token and the refresh token that renews it."""

    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime


@dataclass(frozen=True)
class NewUser:
    """What creating an account takes."""

    username: str
    password: str
    role: Role
    email: str = ""
    full_name: str = ""


class Accounts:
    """Sign-in and identity over the unit of work."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        passwords: Passwords,
        tokens: TokenIssuer,
        clock: Clock,
        lifetimes: TokenLifetimes,
    ) -> None:
        self._uow = uow
        self._passwords = passwords
        self._tokens = tokens
        self._clock = clock
        self._lifetimes = lifetimes

    def audit(
        self,
        kind: str,
        *,
        actor: str,
        target: str,
        peer: str,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        **details: str,
    ) -> AuditRecord:
        """An audit record stamped with the service clock."""
        return AuditRecord(
            time=self._clock.now(),
            actor=actor,
            kind=kind,
            target=target,
            peer=peer,
            outcome=outcome,
            details=details,
        )

    async def login(self, username: str, password: str, *, peer: str) -> IssuedTokens:
        """Tokens for a correct password; one message for every failure."""
        async with self._uow(readonly=True) as uow:
            account = await uow.users.by_username(username) if username else None
        ok = await self._passwords.verify(account.password_hash if account else None, password)
        async with self._uow() as uow:
            if not ok or account is None:
                await uow.audit.append(
                    self.audit(
                        "auth.login",
                        actor=username,
                        target=username,
                        peer=peer,
                        outcome=AuditOutcome.FAILURE,
                        reason="bad credentials",
                    )
                )
                await uow.commit()
                raise errors.Unauthenticated(LOGIN_FAILED)
            user = account.user
            if not user.active:
                await uow.audit.append(
                    self.audit(
                        "auth.login",
                        actor=user.username,
                        target=user.username,
                        peer=peer,
                        outcome=AuditOutcome.DENIED,
                        reason="deactivated",
                    )
                )
                await uow.commit()
                raise errors.PermissionDenied("account is deactivated")
            if self._passwords.needs_rehash(account.password_hash):
                await uow.users.set_password_hash(user.id, await self._passwords.hash(password))
            tokens = await self.issue_tokens(uow, user, family_id=None)
            await uow.audit.append(
                self.audit("auth.login", actor=user.username, target=user.username, peer=peer)
            )
            await uow.commit()
        return tokens

    async def issue_tokens(
        self, uow: UnitOfWork, user: User, *, family_id: str | None
    ) -> IssuedTokens:
        """A new access token and a stored refresh token (a new family unless given)."""
        access, access_exp = self._tokens.issue(ACCESS, user.id, user.role, self._lifetimes.access)
        refresh = new_opaque_token()
        now = self._clock.now()
        refresh_exp = (now + self._lifetimes.refresh).replace(microsecond=0)
        await uow.refresh_tokens.add(
            token_id=str(uuid.uuid4()),
            user_id=user.id,
            family_id=family_id or str(uuid.uuid4()),
            token_hash=hash_opaque(refresh),
            issued_at=now,
            expires_at=refresh_exp,
        )
        return IssuedTokens(access, access_exp, refresh, refresh_exp)

    async def authenticate(self, token: str, peer: str) -> Principal:
        """The principal behind an access token, as the account is now."""
        claims = self._tokens.verify(token, ACCESS)
        async with self._uow(readonly=True) as uow:
            account = await uow.users.get(claims.user_id)
        if account is None:
            raise errors.Unauthenticated("invalid token")
        if not account.user.active:
            raise errors.PermissionDenied("account is deactivated")
        # The stored role wins over the token's: a role change takes effect at once.
        return Principal(
            user_id=account.user.id,
            username=account.user.username,
            role=account.user.role,
            token_id=claims.token_id,
            peer=peer,
        )

    async def current_user(self, principal: Principal) -> User:
        """The caller's profile."""
        async with self._uow(readonly=True) as uow:
            account = await uow.users.get(principal.user_id)
        if account is None:
            raise errors.NotFound("user not found")
        return account.user

    async def create_user(self, new: NewUser, *, actor: str, peer: str) -> User:
        """Creates an account; a name taken case-insensitively is AlreadyExists."""
        username = parse_username(new.username)
        check_new_password(new.password, username)
        password_hash = await self._passwords.hash(new.password)
        user = User(
            id=UserId(str(uuid.uuid4())),
            username=username,
            role=new.role,
            email=new.email.strip(),
            full_name=new.full_name.strip(),
            active=True,
            mfa_enabled=False,
            created_at=self._clock.now(),
        )
        async with self._uow() as uow:
            await uow.users.add(Account(user=user, password_hash=password_hash))
            await uow.audit.append(
                self.audit(
                    "user.created", actor=actor, target=username, peer=peer, role=new.role.name
                )
            )
            await uow.commit()
        return user

    async def bootstrap_admin(self, password: str | None) -> str | None:
        """On an empty database, creates `admin`; returns the password if it was generated."""
        async with self._uow(readonly=True) as uow:
            if await uow.users.count() > 0:
                return None
        generated = password is None
        secret = password if password is not None else secrets.token_urlsafe(18)
        try:
            await self.create_user(
                NewUser(username="admin", password=secret, role=Role.ADMIN),
                actor="system",
                peer="local",
            )
        except errors.AlreadyExists:
            return None  # another replica bootstrapped it first
        return secret if generated else None
