"""Signing in: a password, then (if enabled) a TOTP or backup code, for a session."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from hitl_grpc.accounts.mfa import INVALID_CODE, MfaCodes
from hitl_grpc.accounts.sessions import (
    SESSION_ENDED,
    IssuedTokens,
    MfaChallengeIssued,
    Sessions,
)
from hitl_grpc.accounts.throttle import Attempt, LoginThrottle, mfa_subject, user_subject
from hitl_grpc.accounts.trail import AuditTrail
from hitl_grpc.auth.passwords import Passwords
from hitl_grpc.auth.tokens import MFA_CHALLENGE, TokenIssuer
from hitl_grpc.domain import errors
from hitl_grpc.domain.ports import UnitOfWork, UnitOfWorkFactory
from hitl_grpc.domain.values import Account, AuditOutcome

LOGIN_FAILED = "invalid username or password"
T = TypeVar("T")
# Called with a step ("password", "mfa") and its outcome once per sign-in attempt.
OnOutcome = Callable[[str, str], None]


def _outcome(exc: errors.DomainError) -> str | None:
    """What a refused attempt comes to, for counting; None for a fault, not a verdict."""
    if isinstance(exc, errors.RateLimited):
        return "locked"
    if isinstance(exc, errors.Unauthenticated):
        return "failed"
    if isinstance(exc, errors.PermissionDenied):
        return "deactivated"
    return None


class SignIn:
    """Login and VerifyMfa: every guess is admitted by the lockout before it is checked."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        passwords: Passwords,
        tokens: TokenIssuer,
        throttle: LoginThrottle,
        sessions: Sessions,
        codes: MfaCodes,
        trail: AuditTrail,
        *,
        on_outcome: OnOutcome | None = None,
    ) -> None:
        self._uow = uow
        self._on_outcome = on_outcome
        self._passwords = passwords
        self._tokens = tokens
        self._throttle = throttle
        self._sessions = sessions
        self._codes = codes
        self._trail = trail

    async def _counted(self, step: str, attempt: Awaitable[T], done: Callable[[T], str]) -> T:
        try:
            result = await attempt
        except errors.DomainError as exc:
            outcome = _outcome(exc)
            if outcome and self._on_outcome:
                self._on_outcome(step, outcome)
            raise
        if self._on_outcome:
            self._on_outcome(step, done(result))
        return result

    async def login(
        self, username: str, password: str, *, peer: str
    ) -> IssuedTokens | MfaChallengeIssued:
        """Tokens (or an MFA challenge) for a correct password, counted by outcome."""
        return await self._counted(
            "password",
            self._login(username, password, peer=peer),
            lambda r: "mfa_required" if isinstance(r, MfaChallengeIssued) else "succeeded",
        )

    async def verify_mfa(self, challenge_token: str, code: str, *, peer: str) -> IssuedTokens:
        """Tokens for a challenge token and a second-factor code, counted by outcome."""
        return await self._counted(
            "mfa", self._verify_mfa(challenge_token, code, peer=peer), lambda _: "succeeded"
        )

    async def _login(
        self, username: str, password: str, *, peer: str
    ) -> IssuedTokens | MfaChallengeIssued:
        """Tokens (or an MFA challenge) for a correct password; one message for every failure.

        The attempt is admitted by the throttle before any hashing, whether or not the
        account exists; a locked username or peer is refused there. An unknown user then
        costs the same argon2 run and the same writes as a wrong password.
        """

        async def read(uow: UnitOfWork) -> Account | None:
            return await uow.users.by_username(username) if username else None

        async with self._throttle.attempt(
            user_subject(username),
            username,
            peer,
            self._trail.locked_out("auth.login", username, peer),
            read,
        ) as (attempt, account):
            ok = await self._passwords.verify(account.password_hash if account else None, password)
            # Hashed here, before the outcome's passage: no connection waits on argon2.
            rehashed = (
                await self._passwords.hash(password)
                if ok
                and account is not None
                and account.user.active
                and self._passwords.needs_rehash(account.password_hash)
                else None
            )
            # Every statement of the outcome runs in one round trip with its COMMIT.
            async with self._uow(pipelined=True) as uow:
                if not ok or account is None:
                    await attempt.failed(uow)
                    await uow.audit.append(
                        self._trail.own(
                            "auth.login",
                            username,
                            peer,
                            AuditOutcome.FAILURE,
                            reason="bad credentials",
                        )
                    )
                    await uow.commit()
                    raise errors.Unauthenticated(LOGIN_FAILED)
                return await self._signed_in(uow, attempt, account, rehashed, peer)

    async def _signed_in(
        self,
        uow: UnitOfWork,
        attempt: Attempt,
        account: Account,
        rehashed: str | None,
        peer: str,
    ) -> IssuedTokens | MfaChallengeIssued:
        user = account.user
        if not user.active:
            await uow.audit.append(
                self._trail.own(
                    "auth.login", user.username, peer, AuditOutcome.DENIED, reason="deactivated"
                )
            )
            await uow.commit()
            raise errors.PermissionDenied("account is deactivated")
        if rehashed is not None:
            await uow.users.set_password_hash(user.id, rehashed)
        await attempt.succeeded(uow)
        result: IssuedTokens | MfaChallengeIssued
        if user.mfa_enabled:
            result = self._sessions.challenge(account)
            step = "mfa_challenge"
        else:
            result = await self._sessions.issue(uow, account)
            await self._throttle.signed_in(uow, user.username, peer)
            step = "tokens"
        await uow.audit.append(self._trail.own("auth.login", user.username, peer, result=step))
        await uow.commit()
        return result

    async def _verify_mfa(self, challenge_token: str, code: str, *, peer: str) -> IssuedTokens:
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
            self._throttle.attempt(
                mfa_subject(name),
                name,
                peer,
                self._trail.locked_out("auth.mfa.verify", name, peer),
                read,
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
                    self._trail.own("auth.mfa.verify", user.username, peer, AuditOutcome.FAILURE)
                )
                await uow.commit()
                raise errors.Unauthenticated(INVALID_CODE)
            await attempt.succeeded(uow)
            await self._throttle.signed_in(uow, user.username, peer)
            tokens = await self._sessions.issue(uow, account, family_id=claims.session_id)
            await uow.audit.append(
                self._trail.own("auth.mfa.verify", user.username, peer, method=method)
            )
            await uow.commit()
        return tokens
