"""argon2id password hashing, always on a thread pool so the event loop never waits on it."""

from __future__ import annotations

import asyncio
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from hitl_grpc.domain.errors import InvalidField

PASSWORD_MIN = 12
PASSWORD_MAX = 1024


@dataclass(frozen=True)
class HashParams:
    """argon2id cost; the default is OWASP's m=19 MiB, t=2, p=1."""

    memory_kib: int = 19_456
    time_cost: int = 2
    parallelism: int = 1


class Passwords:
    """Hashes and verifies passwords on a dedicated pool sized to the cores."""

    def __init__(self, params: HashParams, pool: ThreadPoolExecutor) -> None:
        self._hasher = PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            type=Type.ID,
        )
        self._pool = pool
        # Verified against when the user does not exist, so both paths cost the same.
        self._dummy = self._hasher.hash(secrets.token_hex(16))

    async def hash(self, password: str) -> str:
        """A new salted hash of the password."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether the password matches; a missing hash costs the same as a wrong one."""
        loop = asyncio.get_running_loop()
        target = password_hash if password_hash is not None else self._dummy
        ok = await loop.run_in_executor(self._pool, self._check, target, password)
        return ok and password_hash is not None

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether the hash was made with other parameters than today's."""
        return self._hasher.check_needs_rehash(password_hash)


def check_new_password(password: str, username: str, field: str = "password") -> None:
    """Rejects a password that is too short, too long, or the username itself."""
    if len(password) < PASSWORD_MIN:
        raise InvalidField.one(field, f"must be at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise InvalidField.one(field, f"must be at most {PASSWORD_MAX} characters")
    lowered = password.casefold()
    if username and username.casefold() in lowered:
        raise InvalidField.one(field, "must not contain the username")
