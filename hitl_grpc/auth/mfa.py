"""TOTP MFA (pyotp): enrolment, codes with replay refusal, and single-use backup codes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import replace
from datetime import datetime

import pyotp

from hitl_grpc.auth.throttle import LoginThrottle
from hitl_grpc.auth.trail import AuditTrail
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
    canonical = "".join(ch for ch in code.lower() if ch.isalnum())
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_totp_code(code: str) -> bool:
    """Whether a code has the shape of a 6-digit TOTP code."""
    return len(code) == 6 and code.isdigit()


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


class MfaEnrolment:
    """SetupMfa, ConfirmMfa and DisableMfa for the signed-in caller."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        clock: Clock,
        trail: AuditTrail,
        throttle: LoginThrottle,
        codes: MfaCodes,
    ) -> None:
        self._uow = uow
        self._clock = clock
        self._trail = trail
        self._throttle = throttle
        self._codes = codes

    async def setup(self, principal: Principal) -> tuple[str, str, list[str]]:
        """A new pending secret, its otpauth:// URI and ten backup codes."""
        secret = pyotp.random_base32()
        codes = new_backup_codes()
        async with self._uow() as uow:
            account = await self._account(uow, principal)
            if account.user.mfa_enabled:
                raise errors.WrongState("MFA is already on: disable it before enrolling again")
            await uow.users.set_mfa_pending(account.user.id, secret, self._clock.now())
            await uow.backup_codes.replace(account.user.id, [hash_backup_code(c) for c in codes])
            await uow.audit.append(self._audit("auth.mfa.setup", account.user, principal))
            await uow.commit()
        uri = pyotp.TOTP(secret).provisioning_uri(name=account.user.username, issuer_name=ISSUER)
        return secret, uri, codes

    async def confirm(self, principal: Principal, code: str) -> User:
        """Turns MFA on if the code matches the pending secret."""
        subjects = self._throttle.subjects(principal.username, principal.peer)
        async with self._uow() as uow:
            await self._throttle.check(uow, subjects)
            account = await self._account(uow, principal)
            if account.user.mfa_enabled:
                raise errors.WrongState("MFA is already on")
            if account.mfa_pending_secret is None:
                raise errors.WrongState("no MFA enrolment in progress: call SetupMfa first")
            step = totp_step(account.mfa_pending_secret, code.strip(), self._clock.now())
            if step is None:
                await self._refuse(uow, "auth.mfa.confirm", account.user, principal, subjects)
            else:
                now = self._clock.now()
                await uow.users.enable_mfa(account.user.id, account.mfa_pending_secret, step, now)
                await uow.audit.append(self._audit("auth.mfa.confirm", account.user, principal))
                await uow.commit()
        return replace(account.user, mfa_enabled=True)

    async def disable(self, principal: Principal, code: str) -> User:
        """Turns MFA off if the code (TOTP or backup) is valid."""
        subjects = self._throttle.subjects(principal.username, principal.peer)
        async with self._uow() as uow:
            await self._throttle.check(uow, subjects)
            account = await self._account(uow, principal)
            if not account.user.mfa_enabled:
                raise errors.WrongState("MFA is not on")
            if await self._codes.spend(uow, account, code) is None:
                await self._refuse(uow, "auth.mfa.disable", account.user, principal, subjects)
            await uow.users.disable_mfa(account.user.id, self._clock.now())
            await uow.backup_codes.replace(account.user.id, [])
            await uow.audit.append(self._audit("auth.mfa.disable", account.user, principal))
            await uow.commit()
        return replace(account.user, mfa_enabled=False)

    async def _account(self, uow: UnitOfWork, principal: Principal) -> Account:
        account = await uow.users.get_for_update(principal.user_id)
        if account is None:
            raise errors.Unauthenticated("invalid token")
        return account

    async def _refuse(
        self, uow: UnitOfWork, kind: str, user: User, principal: Principal, subjects: list[str]
    ) -> None:
        # A wrong code counts against the sign-in throttle: codes are only 10^6 strong.
        await self._throttle.record_failure(uow, subjects)
        await uow.audit.append(self._audit(kind, user, principal, AuditOutcome.FAILURE))
        await uow.commit()
        raise errors.InvalidField.one("code", "is not a valid code")

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
