"""Account operations: sign-in (password, then MFA), the caller's identity, passwords."""

from __future__ import annotations

import secrets

from hitl_grpc.accounts.mfa import INVALID_CODE, MfaCodes, MfaEnrolment
from hitl_grpc.accounts.sessions import IssuedTokens as IssuedTokens
from hitl_grpc.accounts.sessions import MfaChallengeIssued, Sessions
from hitl_grpc.accounts.sessions import TokenLifetimes as TokenLifetimes
from hitl_grpc.accounts.throttle import (
    Attempt,
    LoginLimits,
    LoginThrottle,
    mfa_subject,
    user_subject,
)
from hitl_grpc.accounts.trail import AuditTrail
from hitl_grpc.accounts.users import NewUser as NewUser
from hitl_grpc.accounts.users import UserAdmin
from hitl_grpc.auth.passwords import Passwords, check_new_password
from hitl_grpc.auth.principal import Access
from hitl_grpc.auth.tokens import ACCESS, MFA_CHALLENGE, TokenIssuer
from hitl_grpc.domain import errors
from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.ports import UnitOfWork, UnitOfWorkFactory, UserChanges
from hitl_grpc.domain.values import Account, AuditOutcome, AuditRecord, Principal, Role, User

LOGIN_FAILED = "invalid username or password"
SESSION_ENDED = "session ended: sign in again"


class Accounts:
    """Sign-in and identity over the unit of work; owns the other account parts."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        passwords: Passwords,
        tokens: TokenIssuer,
        clock: Clock,
        lifetimes: TokenLifetimes,
        limits: LoginLimits | None = None,
    ) -> None:
        self._uow = uow
        self._passwords = passwords
        self._tokens = tokens
        self._clock = clock
        self.trail = AuditTrail(uow, clock)
        self.throttle = LoginThrottle(limits or LoginLimits(), clock, uow)
        self.sessions = Sessions(uow, tokens, clock, lifetimes, self.trail)
        self._codes = MfaCodes(clock)
        self.mfa = MfaEnrolment(uow, clock, self.trail, self.throttle, self._codes, passwords)
        self.users = UserAdmin(uow, passwords, clock, self.trail)

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
        return self.trail.record(
            kind, actor=actor, target=target, peer=peer, outcome=outcome, **details
        )

    def _refused(self, kind: str, name: str, peer: str) -> AuditRecord:
        return self.audit(
            kind, actor=name, target=name, peer=peer, outcome=AuditOutcome.DENIED, reason="locked"
        )

    async def login(
        self, username: str, password: str, *, peer: str
    ) -> IssuedTokens | MfaChallengeIssued:
        """Tokens (or an MFA challenge) for a correct password; one message for every failure.

        The attempt is admitted by the throttle before any hashing, whether or not the
        account exists; a locked username or peer is refused there. An unknown user then
        costs the same argon2 run and the same writes as a wrong password.
        """

        async def read(uow: UnitOfWork) -> Account | None:
            return await uow.users.by_username(username) if username else None

        async with self.throttle.attempt(
            user_subject(username),
            username,
            peer,
            self._refused("auth.login", username, peer),
            read,
        ) as (attempt, account):
            ok = await self._passwords.verify(account.password_hash if account else None, password)
            async with self._uow() as uow:
                if not ok or account is None:
                    await attempt.failed(uow)
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
                return await self._signed_in(uow, attempt, account, password, peer)

    async def _signed_in(
        self, uow: UnitOfWork, attempt: Attempt, account: Account, password: str, peer: str
    ) -> IssuedTokens | MfaChallengeIssued:
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
        await attempt.succeeded(uow)
        result: IssuedTokens | MfaChallengeIssued
        if user.mfa_enabled:
            result = self.sessions.challenge(account)
            step = "mfa_challenge"
        else:
            result = await self.sessions.issue(uow, account)
            await self.throttle.signed_in(uow, user.username, peer)
            step = "tokens"
        await uow.audit.append(
            self.audit(
                "auth.login", actor=user.username, target=user.username, peer=peer, result=step
            )
        )
        await uow.commit()
        return result

    async def verify_mfa(self, challenge_token: str, code: str, *, peer: str) -> IssuedTokens:
        """Tokens for a challenge token and a TOTP code (unused step) or unused backup code.

        The challenge names the session it opens: once that session exists, the challenge
        is spent, so a challenge token works for one sign-in only.
        """
        claims = self._tokens.verify(challenge_token, MFA_CHALLENGE)
        if not claims.session_id:
            raise errors.Unauthenticated("invalid token")
        async with self._uow(readonly=True) as uow:
            found = await uow.users.get(claims.user_id)
        if found is None or found.generation != claims.generation:
            raise errors.Unauthenticated("invalid token")
        name = found.user.username

        async def read(uow: UnitOfWork) -> None:
            return None

        async with (
            self.throttle.attempt(
                mfa_subject(name), name, peer, self._refused("auth.mfa.verify", name, peer), read
            ) as (attempt, _),
            self._uow() as uow,
        ):
            # The row lock makes two verifies of one challenge take turns: the second sees
            # the session the first opened.
            account = await uow.users.get_for_update(claims.user_id)
            if account is None or account.generation != claims.generation:
                raise errors.Unauthenticated("invalid token")
            if await uow.users.has_session(account.user.id, claims.session_id):
                raise errors.Unauthenticated("MFA challenge already used: sign in again")
            user = account.user
            if not user.active:
                raise errors.PermissionDenied("account is deactivated")
            if not user.mfa_enabled:
                raise errors.Unauthenticated(SESSION_ENDED)
            method = await self._codes.spend(uow, account, code)
            if method is None:
                await attempt.failed(uow)
                await uow.audit.append(
                    self.audit(
                        "auth.mfa.verify",
                        actor=user.username,
                        target=user.username,
                        peer=peer,
                        outcome=AuditOutcome.FAILURE,
                    )
                )
                await uow.commit()
                raise errors.Unauthenticated(INVALID_CODE)
            await attempt.succeeded(uow)
            await self.throttle.signed_in(uow, user.username, peer)
            tokens = await self.sessions.issue(uow, account, family_id=claims.session_id)
            await uow.audit.append(
                self.audit(
                    "auth.mfa.verify",
                    actor=user.username,
                    target=user.username,
                    peer=peer,
                    method=method,
                )
            )
            await uow.commit()
        return tokens

    async def authenticate(self, token: str, peer: str) -> Access:
        """The principal behind an access token, as the account is now, and the token's life.

        No cache: one indexed read per call sees a deactivation, role change or revoked
        session the moment it commits, on every replica. A cache would need invalidation
        across replicas (LISTEN/NOTIFY, which is lost while disconnected) to be as correct.
        """
        claims = self._tokens.verify(token, ACCESS)
        async with self._uow(readonly=True) as uow:
            found = await uow.users.with_session(claims.user_id, claims.session_id)
        if found is None:
            raise errors.Unauthenticated("invalid token")
        account, session_revoked = found
        if not account.user.active:
            raise errors.PermissionDenied("account is deactivated")
        if session_revoked or account.generation != claims.generation:
            raise errors.Unauthenticated(SESSION_ENDED)
        # The stored role wins over the token's: a role change takes effect at once.
        principal = Principal(
            user_id=account.user.id,
            username=account.user.username,
            role=account.user.role,
            token_id=claims.token_id,
            peer=peer,
            session_id=claims.session_id,
        )
        return Access(principal, (claims.expires_at - self._clock.now()).total_seconds())

    async def current_user(self, principal: Principal) -> User:
        """The caller's profile."""
        async with self._uow(readonly=True) as uow:
            account = await uow.users.get(principal.user_id)
        if account is None:
            raise errors.NotFound("user not found")
        return account.user

    async def change_password(self, principal: Principal, current: str, new: str) -> None:
        """Sets a new password given the current one; ends the caller's other sessions.

        The guess at the current password goes through the throttle like a login, so a
        stolen access token can't be used to brute-force the password.
        """
        check_new_password(new, principal.username, "new_password")
        name, peer = principal.username, principal.peer

        async def read(uow: UnitOfWork) -> Account | None:
            return await uow.users.get(principal.user_id)

        async with self.throttle.attempt(
            user_subject(name), name, peer, self._refused("auth.password.change", name, peer), read
        ) as (attempt, account):
            if account is None:
                raise errors.Unauthenticated("invalid token")
            ok = await self._passwords.verify(account.password_hash, current)
            new_hash = await self._passwords.hash(new) if ok else None
            now = self._clock.now()
            async with self._uow() as uow:
                if new_hash is None:
                    await attempt.failed(uow)
                    await uow.audit.append(
                        self.audit(
                            "auth.password.change",
                            actor=name,
                            target=name,
                            peer=peer,
                            outcome=AuditOutcome.FAILURE,
                        )
                    )
                    await uow.commit()
                    raise errors.InvalidField.one("current_password", "is not the current password")
                await attempt.succeeded(uow)
                await uow.users.update(account.user.id, UserChanges(password_hash=new_hash), now)
                await uow.refresh_tokens.revoke_user_sessions(
                    account.user.id, now, keep_family=principal.session_id
                )
                await uow.audit.append(
                    self.audit("auth.password.change", actor=name, target=name, peer=peer)
                )
                await uow.commit()

    async def create_user(self, new: NewUser, *, actor: str, peer: str) -> User:
        """Creates an account; a name taken case-insensitively is AlreadyExists."""
        return await self.users.create(new, actor=actor, peer=peer)

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
