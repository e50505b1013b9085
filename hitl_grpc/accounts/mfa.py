"""TOTP MFA (pyotp): enrolment, codes with replay refusal, and single-use backup codes."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import NoReturn

import pyotp

from hitl_grpc.accounts.throttle import Attempt, LoginThrottle, mfa_subject, user_subject
from hitl_grpc.accounts.trail import AuditTrail
from hitl_grpc.auth.passwords import Passwords
from hitl_grpc.domain import errors
from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.ports import UnitOfWork, UnitOfWorkFactory
from hitl_grpc.domain.values import Account, AuditOutcome, AuditRecord, Principal, User

BACKUP_CODE_COUNT = 10
# 16 base32 characters = 80 random bits: too many to brute-force even from a leaked
# SHA-256, so backup codes need no slow hash (which would cost ten argon2 runs per use).
BACKUP_CODE_CHARS = 16
BACKUP_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
TOTP_WINDOW = 1  # accept the previous and the next 30 s step too (clock drift)
# The issuer an authenticator app shows when none is configured (HITL_MFA_ISSUER).
ISSUER = "hitl-grpc"
INVALID_CODE = "invalid code"


def new_backup_codes() -> list[str]:
    """Ten fresh codes, shown once, as xxxx-xxxx-xxxx-xxxx."""
    codes = []
    for _ in range(BACKUP_CODE_COUNT):
        raw = "".join(secrets.choice(BACKUP_ALPHABET) for _ in range(BACKUP_CODE_CHARS))
        codes.append("-".join(raw[i : i + 4] for i in range(0, BACKUP_CODE_CHARS, 4)))
    return codes


def hash_backup_code(code: str) -> str:
    """What is stored for a backup code: SHA-256 of its canonical form."""
    canonical = "".join(ch for ch in code.lower() if ch.isascii() and ch.isalnum())
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_totp_code(code: str) -> bool:
    """Whether a code has the shape of a 6-digit TOTP code.

    ASCII only: str.isdigit() also accepts '١٢٣٤٥٦' or fullwidth digits, which
    hmac.compare_digest refuses with a TypeError.
    """
    return len(code) == 6 and code.isascii() and code.isdigit()


def totp_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step (±1 around now) whose code this is, or None.

    pyotp's verify() says only yes or no and accepts a code again within its window; the
    step is what the caller records so the same code can't be replayed.
    """
    if not is_totp_code(code):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for offset in range(-TOTP_WINDOW, TOTP_WINDOW + 1):
        if hmac.compare_digest(totp.at(now, counter_offset=offset), code):
            return current + offset
    return None


class MfaCodes:
    """Checks a second factor of an enrolled account, spending what it accepts."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def spend(self, uow: UnitOfWork, account: Account, code: str) -> str | None:
        """'totp' or 'backup' if the code was valid and is now used up; None otherwise."""
        code = code.strip()
        now = self._clock.now()
        if account.mfa_secret is not None and is_totp_code(code):
            step = totp_step(account.mfa_secret, code, now)
            if step is not None and await uow.users.claim_mfa_step(account.user.id, step):
                return "totp"
            return None
        if code and await uow.backup_codes.use(account.user.id, hash_backup_code(code), now):
            return "backup"
        return None

    async def spend_fresh_totp(
        self, uow: UnitOfWork, account: Account, code: str, max_age: timedelta
    ) -> bool:
        """Whether `code` is an unused TOTP code of a time step that ended at most `max_age`
        ago (or has not ended), and is now used up."""
        code = code.strip()
        now = self._clock.now()
        if account.mfa_secret is None or not is_totp_code(code):
            return False
        step = totp_step(account.mfa_secret, code, now)
        if step is None:
            return False
        totp = pyotp.TOTP(account.mfa_secret)
        # Step s ends at (s + 1) * interval: it is fresh while that is >= now - max_age.
        oldest = math.ceil((now - max_age).timestamp() / totp.interval) - 1
        return step >= oldest and await uow.users.claim_mfa_step(account.user.id, step)


class StepUpCodes:
    """The fresh TOTP code a high-impact approval needs (domain.ports.StepUp).

    Only a TOTP code will do, not a backup code: it proves the device is at hand now. The
    time step it is spent on is the one sign-in records, so a code used to sign in can't
    approve, nor one approval's code another. A wrong code counts against the account's
    second-factor lockout, like one at sign-in: a stolen access token gives no faster way
    to guess codes.
    """

    KIND = "decision.step_up"

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        codes: MfaCodes,
        trail: AuditTrail,
        throttle: LoginThrottle,
        *,
        max_age: timedelta = timedelta(seconds=30),
    ) -> None:
        self._uow = uow
        self._codes = codes
        self._trail = trail
        self._throttle = throttle
        self._max_age = max_age

    async def verify(self, principal: Principal, code: str, what: str) -> None:
        """Returns once a valid, unused TOTP code of the caller's is spent; raises otherwise."""
        async with self._uow(readonly=True) as uow:
            account = await uow.users.get(principal.user_id)
        if account is None:
            raise errors.Unauthenticated("invalid token")
        if not account.user.mfa_enabled or account.mfa_secret is None:
            raise errors.WrongState(
                f"approving {what} needs step-up MFA, and {account.user.username} has no "
                "MFA: enrol with SetupMfa and ConfirmMfa first"
            )
        code = code.strip()
        if not code:
            raise errors.PermissionDenied(
                f"approving {what} needs a fresh TOTP code: send it in the x-hitl-otp "
                "metadata or the otp field"
            )
        refused = self._trail.locked_out(self.KIND, principal.username, principal.peer)

        async def read(uow: UnitOfWork) -> None:
            return None

        async with (
            self._throttle.attempt(
                mfa_subject(principal.username), principal.username, principal.peer, refused, read
            ) as (attempt, _),
            self._uow() as uow,
        ):
            current = await uow.users.get_for_update(principal.user_id)
            if current is None:
                raise errors.Unauthenticated("invalid token")
            spent = await self._codes.spend_fresh_totp(uow, current, code, self._max_age)
            if spent:
                await attempt.succeeded(uow)
            else:
                await attempt.failed(uow)
            await uow.audit.append(
                self._trail.record(
                    self.KIND,
                    actor=principal.username,
                    target=current.user.username,
                    peer=principal.peer,
                    outcome=AuditOutcome.SUCCESS if spent else AuditOutcome.DENIED,
                    actions=what,
                )
            )
            await uow.commit()
        if not spent:
            raise errors.PermissionDenied(
                f"approving {what} needs a fresh TOTP code: this one is wrong, expired or "
                "already used"
            )


class MfaEnrolment:
    """SetupMfa, ConfirmMfa and DisableMfa for the signed-in caller, and an admin's reset.

    Every password or code they check is charged to the lockout before it is checked, like a
    sign-in: a stolen access token gives no faster way to guess either.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        trail: AuditTrail,
        throttle: LoginThrottle,
        codes: MfaCodes,
        passwords: Passwords,
        issuer: str = ISSUER,
    ) -> None:
        self._issuer = issuer
        self._uow = uow
        self._clock = clock
        self._trail = trail
        self._throttle = throttle
        self._codes = codes
        self._passwords = passwords

    async def setup(self, principal: Principal, password: str) -> tuple[str, str, list[str]]:
        """A new pending secret, its otpauth:// URI and ten backup codes, for the password.

        Re-authentication (OWASP ASVS): whoever holds only an access token must not be able
        to bind a second factor of their own to the account.
        """
        kind = "auth.mfa.setup"
        async with self._attempt(kind, user_subject(principal.username), principal) as (
            attempt,
            account,
        ):
            if account.user.mfa_enabled:
                raise errors.WrongState("MFA is already on: disable it before enrolling again")
            ok = bool(password) and await self._passwords.verify(account.password_hash, password)
            secret = pyotp.random_base32()
            codes = new_backup_codes()
            async with self._uow() as uow:
                if not ok:
                    reason = "is not your password" if password else "is required to set up MFA"
                    await self._refuse(
                        uow, attempt, kind, account.user, principal, "password", reason
                    )
                await attempt.succeeded(uow)
                await uow.users.set_mfa_pending(account.user.id, secret, self._clock.now())
                await uow.backup_codes.replace(
                    account.user.id, [hash_backup_code(c) for c in codes]
                )
                await uow.audit.append(self._audit(kind, account.user, principal))
                await uow.commit()
        uri = pyotp.TOTP(secret).provisioning_uri(
            name=account.user.username, issuer_name=self._issuer
        )
        return secret, uri, codes

    async def confirm(self, principal: Principal, code: str) -> User:
        """Turns MFA on if the code matches the pending secret."""
        kind = "auth.mfa.confirm"
        async with (
            self._attempt(kind, mfa_subject(principal.username), principal) as (attempt, _),
            self._uow() as uow,
        ):
            account = await self._account(uow, principal)
            secret = _pending(account)
            step = totp_step(secret, code.strip(), self._clock.now())
            if step is None:
                await self._refuse(uow, attempt, kind, account.user, principal)
            await attempt.succeeded(uow)
            await uow.users.enable_mfa(account.user.id, secret, step, self._clock.now())
            await uow.audit.append(self._audit(kind, account.user, principal))
            await uow.commit()
        return replace(account.user, mfa_enabled=True)

    async def disable(self, principal: Principal, code: str) -> User:
        """Turns MFA off if the code (TOTP or backup) is valid."""
        kind = "auth.mfa.disable"
        async with (
            self._attempt(kind, mfa_subject(principal.username), principal) as (attempt, _),
            self._uow() as uow,
        ):
            account = _enabled(await self._account(uow, principal))
            if await self._codes.spend(uow, account, code) is None:
                await self._refuse(uow, attempt, kind, account.user, principal)
            await attempt.succeeded(uow)
            await uow.users.disable_mfa(account.user.id, self._clock.now())
            await uow.backup_codes.replace(account.user.id, [])
            await uow.audit.append(self._audit(kind, account.user, principal))
            await uow.commit()
        return replace(account.user, mfa_enabled=False)

    def _attempt(
        self, kind: str, subject: str, principal: Principal
    ) -> AbstractAsyncContextManager[tuple[Attempt, Account]]:
        refused = self._trail.locked_out(kind, principal.username, principal.peer)

        async def read(uow: UnitOfWork) -> Account:
            return await self._account(uow, principal)

        return self._throttle.attempt(subject, principal.username, principal.peer, refused, read)

    async def _account(self, uow: UnitOfWork, principal: Principal) -> Account:
        account = await uow.users.get_for_update(principal.user_id)
        if account is None:
            raise errors.Unauthenticated("invalid token")
        return account

    async def _refuse(
        self,
        uow: UnitOfWork,
        attempt: Attempt,
        kind: str,
        user: User,
        principal: Principal,
        field: str = "code",
        reason: str = "is not a valid code",
    ) -> NoReturn:
        await attempt.failed(uow)
        await uow.audit.append(self._audit(kind, user, principal, AuditOutcome.FAILURE))
        await uow.commit()
        raise errors.InvalidField.one(field, reason)

    def _audit(
        self,
        kind: str,
        user: User,
        principal: Principal,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
    ) -> AuditRecord:
        return self._trail.record(
            kind,
            actor=principal.username,
            target=user.username,
            peer=principal.peer,
            outcome=outcome,
        )


def _pending(account: Account) -> str:
    if account.user.mfa_enabled:
        raise errors.WrongState("MFA is already on")
    if account.mfa_pending_secret is None:
        raise errors.WrongState("no MFA enrolment in progress: call SetupMfa first")
    return account.mfa_pending_secret


def _enabled(account: Account) -> Account:
    if not account.user.mfa_enabled:
        raise errors.WrongState("MFA is not on")
    return account
