"""Where the signing key comes from: configured, or generated once beside the SQLite file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from hitl_grpc.auth.tokens import SigningKeys, key_id
from hitl_grpc.config import MIN_SECRET_BYTES, ConfigError, Settings


def key_file_for(database: Path) -> Path:
    """The generated key's file: beside the database, readable by the owner only."""
    return database.with_name(database.name + ".jwt-key")


def _read_or_create(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return path.read_bytes().strip()


def load_signing_keys(settings: Settings) -> SigningKeys:
    """The signing key and every key still accepted for verification."""
    if settings.jwt_secret:
        primary = settings.jwt_secret.encode()
    elif settings.jwt_secret_file is not None:
        primary = settings.jwt_secret_file.read_bytes().strip()
        if len(primary) < MIN_SECRET_BYTES:
            raise ConfigError(
                "HITL_JWT_SECRET_FILE", f"key must be at least {MIN_SECRET_BYTES} bytes"
            )
    elif settings.sqlite_path is not None:
        primary = _read_or_create(key_file_for(settings.sqlite_path))
    else:
        raise ConfigError("HITL_JWT_SECRET", "required with PostgreSQL")
    keys = {key_id(primary): primary}
    for previous in settings.jwt_previous_secrets:
        keys[key_id(previous.encode())] = previous.encode()
    return SigningKeys(signing_kid=key_id(primary), keys=keys)
