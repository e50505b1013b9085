"""Opaque tokens: page tokens and watch cursors as unpadded URL-safe base64.

Clients treat them as strings to hand back. Each kind of token says what it holds and
refuses in its own words what it does not recognise; this module only wraps the bytes.
"""

from __future__ import annotations

import base64


def encode(raw: bytes) -> str:
    """The token of `raw`: URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(token: str) -> bytes | None:
    """The bytes of a token from encode(), or None if it is not base64 at all.

    Strict: a character outside the alphabet refuses the token instead of being skipped,
    so no two different strings are accepted as the same token.
    """
    padded = token + "=" * (-len(token) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except ValueError:  # binascii.Error, or characters outside ASCII
        return None


def decode_text(token: str, encoding: str = "utf-8") -> str | None:
    """The text of a token from encode(), or None if it is not base64 of text in `encoding`."""
    raw = decode(token)
    if raw is None:
        return None
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError:
        return None
