"""The signed-in session `hitl-grpc login` keeps: one JSON file, readable by its owner only.

`$XDG_CONFIG_HOME/hitl-grpc/session.json` (default `~/.config/hitl-grpc/`), the directory 0700
and the file 0600. It holds the token pair and how to reach the server. The refresh token
rotates on every refresh and the server treats a replayed one as stolen, so the file is
rewritten at each rotation (atomically: a crash leaves the old or the new pair, never half)
and processes that may refresh take `locked()` first.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Final

from google.protobuf import json_format
from hitl.v1 import auth_pb2

FILE_NAME: Final = "session.json"
DIR_MODE: Final = 0o700
FILE_MODE: Final = 0o600


class SessionFileError(Exception):
    """The session file exists but can't be read or used; the message says why."""


@dataclass(frozen=True)
class Connection:
    """How to reach the server: its address and, with TLS, what to trust."""

    address: str
    tls: bool = False
    ca_file: str = ""
    server_name: str = ""


@dataclass(frozen=True)
class Session:
    """A signed-in account's token pair and the server it belongs to."""

    connection: Connection
    username: str
    tokens: auth_pb2.TokenPair

    def with_tokens(self, tokens: auth_pb2.TokenPair) -> Session:
        """The same session after a rotation."""
        return replace(self, tokens=tokens)


def directory(env: Mapping[str, str]) -> Path:
    """The CLI's own configuration directory."""
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".config"
    return root / "hitl-grpc"


def path(env: Mapping[str, str]) -> Path:
    """Where the session is kept."""
    return directory(env) / FILE_NAME


def load(file: Path) -> Session | None:
    """The kept session, or None if there is none."""
    try:
        raw = json.loads(file.read_text())
        tokens = json_format.ParseDict(raw["tokens"], auth_pb2.TokenPair())
        return Session(Connection(**raw["connection"]), str(raw["username"]), tokens)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SessionFileError(f"cannot read {file}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, json_format.ParseError):
        raise SessionFileError(f"{file} is not a session file: run hitl-grpc login") from None


def save(file: Path, session: Session) -> None:
    """Writes the session, replacing any other, with owner-only modes."""
    file.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    # mkdir's mode is only for a new directory (and masked by the umask).
    os.chmod(file.parent, DIR_MODE)
    body: dict[str, Any] = {
        "connection": asdict(session.connection),
        "username": session.username,
        "tokens": json_format.MessageToDict(session.tokens),
    }
    fd, scratch = tempfile.mkstemp(dir=file.parent, prefix=".session-", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as out:
            json.dump(body, out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, file)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def remove(file: Path) -> bool:
    """Deletes the kept session; whether there was one."""
    try:
        file.unlink()
    except FileNotFoundError:
        return False
    return True


@contextmanager
def locked(file: Path) -> Iterator[None]:
    """Holds the session's lock: two commands never rotate the same refresh token."""
    file.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd = os.open(file.parent / ".session.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class FileTokens:
    """The session file as the client's TokenStore, for one server."""

    def __init__(self, file: Path, connection: Connection, username: str) -> None:
        self._file = file
        self._connection = connection
        self._username = username

    def load(self) -> auth_pb2.TokenPair | None:
        """The pair on file, if it is this server's (a later login may have replaced it)."""
        kept = load(self._file)
        if kept is None or kept.connection.address != self._connection.address:
            return None
        return kept.tokens

    def save(self, tokens: auth_pb2.TokenPair) -> None:
        """Rewrites the file with the new pair."""
        save(self._file, Session(self._connection, self._username, tokens))

    def exclusive(self) -> AbstractContextManager[None]:
        """The file's lock."""
        return locked(self._file)
