"""Sign-in sessions: access tokens checked against their session, rotating refresh tokens
with reuse detection, logout."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from hitl_grpc.accounts.trail import AuditTrail
from hitl_grpc.auth.principal import Access
from hitl_grpc.auth.tokens import ACCESS, MFA_CHALLENGE, TokenIssuer, hash_opaque, new_opaque_token
from hitl_grpc.domain import errors
from hitl_grpc.domain.access import SESSION_ENDED, StoredAccess, judge
from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.ports import HotStatements, UnitOfWork, UnitOfWorkFactory
from hitl_grpc.domain.values import Account, AccountCheck, AuditOutcome, Principal, Role, UserId

__all__ = ["INVALID_REFRESH", "SESSION_ENDED", "Sessions"]

INVALID_REFRESH = "invalid refresh token"
# Account names remembered from earlier checks (names never change): bounded, and
# dropped whole when full; a name not remembered sends the call down the ordinary path.
NAMES_MAX = 10_000


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
class MfaChallengeIssued:
    """The first half of an MFA sign-in: a token only VerifyMfa accepts."""

    challenge_token: str
    expires_at: datetime


class Sessions:
    """Issues, checks, rotates and revokes sessions; a session is one refresh-token family."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        tokens: TokenIssuer,
        clock: Clock,
        lifetimes: TokenLifetimes,
        trail: AuditTrail,
        hot: HotStatements | None = None,
    ) -> None:
        self._uow = uow
        self._tokens = tokens
        self._clock = clock
        self._lifetimes = lifetimes
        self._trail = trail
        self._hot = hot
        self._names: dict[UserId, str] = {}

    async def issue(
        self, uow: UnitOfWork, account: Account, *, family_id: str | None = None
    ) -> IssuedTokens:
        """A new access token and a stored refresh token (a new session unless given)."""
        user = account.user
        family = family_id or str(uuid.uuid4())
        access, access_exp = self._tokens.issue(
            ACCESS,
            user.id,
            user.role,
            self._lifetimes.access,
            generation=account.generation,
            session_id=family,
        )
        refresh = new_opaque_token()
        now = self._clock.now()
        refresh_exp = (now + self._lifetimes.refresh).replace(microsecond=0)
        await uow.refresh_tokens.add(
            token_id=str(uuid.uuid4()),
            user_id=user.id,
            family_id=family,
            token_hash=hash_opaque(refresh),
            issued_at=now,
            expires_at=refresh_exp,
        )
        return IssuedTokens(access, access_exp, refresh, refresh_exp)

    async def authenticate(self, token: str, peer: str) -> Access:
        """The principal behind an access token, as the account is now, and the token's life.

        No cache: one indexed read per call sees a deactivation, role change or revoked
        session the moment it commits, on every replica. A cache would need invalidation
        across replicas (LISTEN/NOTIFY, which is lost while disconnected) to be as correct.
        """
        claims = self._tokens.verify(token, ACCESS)
        if self._hot is not None:
            found = await self._hot.account_with_session(claims.user_id, claims.session_id)
        else:
            async with self._uow(readonly=True) as uow:
                found = await uow.users.with_session(claims.user_id, claims.session_id)
        judge(StoredAccess.of(*found) if found else None, generation=claims.generation)
        assert found is not None
        account = found[0]
        if len(self._names) >= NAMES_MAX:
            self._names.clear()
        self._names[account.user.id] = account.user.username
        principal = Principal(
            user_id=account.user.id,
            username=account.user.username,
            role=account.user.role,
            token_id=claims.token_id,
            peer=peer,
            session_id=claims.session_id,
        )
        ttl_s = (claims.expires_at - self._clock.now()).total_seconds()
        return Access(principal, ttl_s, account.user)

    def remembers(self, user_id: UserId) -> bool:
        """Whether this account's next calls may make their check in their own statement."""
        return self._hot is not None and user_id in self._names

    def deferred(
        self, token: str, peer: str, roles: frozenset[Role], method: str
    ) -> tuple[AccountCheck, float] | None:
        """The token's check for the call's own statement to make, and the token's life.

        None when the store has no such statements or the account's name is not known
        yet: then the call checks first, as any other (authenticate).
        """
        if self._hot is None:
            return None
        claims = self._tokens.verify(token, ACCESS)
        username = self._names.get(claims.user_id)
        if username is None:
            return None
        check = AccountCheck(
            user_id=claims.user_id,
            username=username,
            session_id=claims.session_id,
            generation=claims.generation,
            token_id=claims.token_id,
            peer=peer,
            roles=roles,
            method=method,
        )
        return check, (claims.expires_at - self._clock.now()).total_seconds()

    async def authenticate_certificate(
        self, subject: str, expires_at: datetime, peer: str
    ) -> Access:
        """The SERVICE account bound to a verified client certificate's subject, as it is now.

        Like a token, read on every call: unbinding, deactivation or a role change takes
        effect on the next call. The certificate's own expiry bounds the access.
        """
        async with self._uow(readonly=True) as uow:
            account = await uow.users.by_certificate_subject(subject)
        if account is None:
            raise errors.Unauthenticated(f"no account is bound to certificate subject {subject!r}")
        user = account.user
        if not user.active:
            raise errors.PermissionDenied("account is deactivated")
        if user.role is not Role.SERVICE:
            raise errors.PermissionDenied("only SERVICE accounts sign in by client certificate")
        principal = Principal(
            user_id=user.id, username=user.username, role=user.role, token_id="", peer=peer
        )
        return Access(principal, (expires_at - self._clock.now()).total_seconds(), user)

    def challenge(self, account: Account) -> MfaChallengeIssued:
        """A short-lived challenge token; its `typ` keeps it out of every RPC but VerifyMfa.

        It carries the id of the session it will open, so it is spent once that session exists.
        """
        token, expires_at = self._tokens.issue(
            MFA_CHALLENGE,
            account.user.id,
            account.user.role,
            self._lifetimes.mfa_challenge,
            generation=account.generation,
            session_id=str(uuid.uuid4()),
        )
        return MfaChallengeIssued(token, expires_at)

    async def refresh(self, refresh_token: str, *, peer: str) -> IssuedTokens:
        """Rotates a refresh token; presenting a used one again revokes its whole family."""
        now = self._clock.now()
        async with self._uow() as uow:
            stored = await uow.refresh_tokens.by_hash(hash_opaque(refresh_token))
            account = await uow.users.get(stored.user_id) if stored else None
            if stored is None or account is None:
                await self._fail(uow, "", peer, "unknown", errors.Unauthenticated(INVALID_REFRESH))
            name = account.user.username
            if stored.revoked_at is not None:
                await self._fail(
                    uow, name, peer, "revoked", errors.Unauthenticated(INVALID_REFRESH)
                )
            # The conditional rotate also catches a second request racing with the same token.
            if stored.rotated_at is not None or not await uow.refresh_tokens.rotate(stored.id, now):
                await uow.refresh_tokens.revoke_family(stored.family_id, now)
                await uow.audit.append(
                    self._trail.record(
                        "auth.refresh.reuse_detected",
                        actor=name,
                        target=name,
                        peer=peer,
                        outcome=AuditOutcome.DENIED,
                        session=stored.family_id,
                    )
                )
                await uow.commit()
                raise errors.Unauthenticated(INVALID_REFRESH)
            if stored.expires_at <= now:
                await self._fail(
                    uow, name, peer, "expired", errors.Unauthenticated(INVALID_REFRESH)
                )
            if not account.user.active:
                await self._fail(
                    uow,
                    name,
                    peer,
                    "deactivated",
                    errors.PermissionDenied("account is deactivated"),
                )
            tokens = await self.issue(uow, account, family_id=stored.family_id)
            await uow.audit.append(
                self._trail.record(
                    "auth.refresh", actor=name, target=name, peer=peer, session=stored.family_id
                )
            )
            await uow.commit()
        return tokens

    async def _fail(
        self, uow: UnitOfWork, name: str, peer: str, reason: str, error: errors.DomainError
    ) -> NoReturn:
        denied = isinstance(error, errors.PermissionDenied)
        await uow.audit.append(
            self._trail.record(
                "auth.refresh",
                actor=name,
                target=name,
                peer=peer,
                outcome=AuditOutcome.DENIED if denied else AuditOutcome.FAILURE,
                reason=reason,
            )
        )
        await uow.commit()
        raise error

    async def logout(self, principal: Principal, refresh_token: str) -> None:
        """Ends a session: the given refresh token's, or the caller's current one."""
        if not (principal.session_id or refresh_token):
            raise errors.WrongState("signed in by client certificate: there is no session to end")
        now = self._clock.now()
        async with self._uow() as uow:
            family = principal.session_id
            if refresh_token:
                stored = await uow.refresh_tokens.by_hash(hash_opaque(refresh_token))
                if stored is None or stored.user_id != principal.user_id:
                    raise errors.NotFound("refresh token not found")
                family = stored.family_id
            await uow.refresh_tokens.revoke_family(family, now)
            await uow.audit.append(
                self._trail.record(
                    "auth.logout",
                    actor=principal.username,
                    target=principal.username,
                    peer=principal.peer,
                    session=family,
                )
            )
            await uow.commit()
