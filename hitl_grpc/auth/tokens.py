"""JWT access tokens (HS256 pinned, key ids for rotation) and opaque refresh tokens."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import jwt

from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.errors import Unauthenticated
from hitl_grpc.domain.values import Role, UserId

ALGORITHM: Final = "HS256"
ACCESS: Final = "access"
MFA_CHALLENGE: Final = "mfa_challenge"
REQUIRED_CLAIMS: Final = ["sub", "role", "jti", "iat", "exp", "iss", "aud", "typ"]


@dataclass(frozen=True)
class SigningKeys:
    """One key signs; every key verifies, so a rotated-out key's tokens live out their TTL."""

    signing_kid: str
    keys: Mapping[str, bytes]


@dataclass(frozen=True)
class Claims:
    """A verified token's claims."""

    user_id: UserId
    role: Role
    token_id: str
    expires_at: datetime
    generation: int
    session_id: str = ""


def key_id(secret: bytes) -> str:
    """A stable, non-secret name for a key."""
    return hashlib.sha256(secret).hexdigest()[:16]


def hash_opaque(token: str) -> str:
    """What is stored for an opaque token: its SHA-256 (the token has 256 random bits)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_opaque_token() -> str:
    """A fresh random opaque token."""
    return secrets.token_urlsafe(32)


# Verified tokens one process remembers; past this the memory starts again.
VERIFIED_MAX: Final = 8192


class TokenIssuer:
    """Issues and verifies signed tokens of a given type."""

    def __init__(self, keys: SigningKeys, *, issuer: str, audience: str, clock: Clock) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._clock = clock
        # Tokens whose signature and claims were verified, exactly as presented: the keys
        # never change in a process, so only the expiry is left to check on the next call.
        # (Whether the account still admits the token is read on every call, elsewhere.)
        self._verified: dict[tuple[str, str], Claims] = {}

    def issue(
        self,
        typ: str,
        user_id: UserId,
        role: Role,
        ttl: timedelta,
        generation: int = 0,
        session_id: str = "",
    ) -> tuple[str, datetime]:
        """A signed token of type `typ` and its expiry."""
        now = self._clock.now()
        expires_at = now + ttl
        claims: dict[str, Any] = {
            "sub": user_id,
            "role": role.name.lower(),
            "jti": uuid.uuid4().hex,
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
            "iss": self._issuer,
            "aud": self._audience,
            "typ": typ,
            "gen": generation,
            "sid": session_id,
        }
        kid = self._keys.signing_kid
        token = jwt.encode(claims, self._keys.keys[kid], algorithm=ALGORITHM, headers={"kid": kid})
        return token, expires_at.replace(microsecond=0)

    def verify(self, token: str, typ: str) -> Claims:
        """The claims of a valid token of type `typ`; anything else is Unauthenticated."""
        claims = self._verified.get((token, typ))
        if claims is None:
            claims = self._verify_signed(token, typ)
            if len(self._verified) >= VERIFIED_MAX:
                self._verified.clear()
            self._verified[(token, typ)] = claims
        if claims.expires_at <= self._clock.now():
            raise Unauthenticated("token expired")
        return claims

    def _verify_signed(self, token: str, typ: str) -> Claims:
        """The claims of a token whose signature, issuer, audience and type verify."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._keys.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise Unauthenticated("invalid token")
            # Expiry is checked below against the service clock, everything else here.
            raw = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": REQUIRED_CLAIMS, "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid token") from exc
        if raw.get("typ") != typ:
            raise Unauthenticated("invalid token")
        try:
            expires_at = datetime.fromtimestamp(int(raw["exp"]), tz=self._clock.now().tzinfo)
            claims = Claims(
                user_id=UserId(str(raw["sub"])),
                role=Role[str(raw["role"]).upper()],
                token_id=str(raw["jti"]),
                expires_at=expires_at,
                generation=int(raw.get("gen", 0)),
                session_id=str(raw.get("sid", "")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise Unauthenticated("invalid token") from exc
        return claims
