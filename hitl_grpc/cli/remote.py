"""What every command over the API shares: the server to reach, a signed-in client, and one
way of turning a failure into a line on stderr and an exit status.

    async with remote.signed_in(args) as client:   # args from remote.add_options
        ...

Credentials, first found: HITL_USERNAME and HITL_PASSWORD (scripts; an MFA account is asked
for a code), else the session `hitl-grpc login` kept. Server: --address, HITL_ADDRESS, the
session's, HITL_LISTEN, 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import grpc

from hitl_grpc.cli import session
from hitl_grpc.client import HitlClient, HitlClientError

DEFAULT_ADDRESS: Final = "127.0.0.1:50051"

# The exit statuses of every command over the API (README: "Working the queue from a shell").
EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1  # the server said no: wrong state, lost race, bad field, exists ...
EXIT_USAGE: Final = 2  # bad arguments or local configuration (argparse uses 2 too)
EXIT_UNAVAILABLE: Final = 3  # server unreachable or too slow: worth retrying
EXIT_UNAUTHENTICATED: Final = 4  # not signed in, session expired, wrong password or code
EXIT_PERMISSION: Final = 5  # signed in, but the role may not do this (or deactivated)
EXIT_NOT_FOUND: Final = 6  # no such decision or user
EXIT_INTERRUPTED: Final = 130  # Ctrl-C

EXIT_OF: Final[Mapping[grpc.StatusCode, int]] = {
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_PERMISSION,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
}
SESSION_EXPIRED: Final = "session expired, run hitl-grpc login"


class CliError(Exception):
    """A failure already worded for the user, with its exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_options(parser: argparse.ArgumentParser) -> None:
    """The server options of a command over the API."""
    group = parser.add_argument_group("server (default: the one `hitl-grpc login` signed in to)")
    group.add_argument(
        "--address", help=f"host:port (default: HITL_ADDRESS, the session's, {DEFAULT_ADDRESS})"
    )
    group.add_argument("--tls", action="store_true", default=None, help="speak TLS")
    group.add_argument("--ca-file", help="PEM roots to trust (implies --tls)")
    group.add_argument("--server-name", help="the name the server's certificate must carry")


def connection(
    args: argparse.Namespace, kept: session.Session | None, env: Mapping[str, str]
) -> session.Connection:
    """The server to reach: options first, then the environment, then the kept session."""
    address = args.address or env.get("HITL_ADDRESS") or ""
    base = kept.connection if kept is not None else None
    if base is not None and address and address != base.address:
        base = None  # another server: none of the session's settings apply
    if not address:
        address = base.address if base else env.get("HITL_LISTEN") or DEFAULT_ADDRESS
    ca_file = str(Path(args.ca_file).resolve()) if args.ca_file else ""
    tls = bool(args.tls or ca_file or args.server_name)
    if base is not None and not tls:
        return session.Connection(address, base.tls, base.ca_file, base.server_name)
    return session.Connection(address, tls, ca_file, args.server_name or "")


def credentials(conn: session.Connection) -> grpc.ChannelCredentials | None:
    """Channel credentials for that server; None speaks plaintext."""
    if not conn.tls:
        return None
    try:
        roots = Path(conn.ca_file).read_bytes() if conn.ca_file else None
    except OSError as exc:
        message = f"cannot read the CA file {conn.ca_file}: {exc.strerror}"
        raise CliError(message, EXIT_USAGE) from None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def client(conn: session.Connection, **kwargs: Any) -> HitlClient:
    """A client for that server (not yet signed in)."""
    return HitlClient(
        conn.address, credentials=credentials(conn), server_name=conn.server_name, **kwargs
    )


def ask_secret(prompt: str) -> str:
    """A password or code: hidden on a terminal (getpass), one line of stdin otherwise."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    print(file=sys.stderr)  # what a terminal would echo: the Enter
    if not line:
        raise CliError(f"no input for {prompt.strip().rstrip(':')}", EXIT_USAGE)
    return line.rstrip("\r\n")


async def ask_mfa_code() -> str:
    """Asks for a TOTP or backup code without blocking the event loop."""
    return await asyncio.to_thread(ask_secret, "MFA code: ")


@asynccontextmanager
async def signed_in(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> AsyncIterator[HitlClient]:
    """A signed-in client for a command's options (see the module's docstring)."""
    env = os.environ if env is None else env
    file = session.path(env)
    username, password = env.get("HITL_USERNAME", ""), env.get("HITL_PASSWORD", "")
    try:
        kept = session.load(file)
    except session.SessionFileError as exc:
        if not (username and password):
            raise CliError(str(exc), EXIT_USAGE) from None
        kept = None  # not needed: the environment signs in
    conn = connection(args, kept, env)
    if username and password:
        async with client(conn, username=username, password=password, mfa_code=ask_mfa_code) as c:
            yield c
        return
    if kept is None or kept.connection.address != conn.address:
        where = "" if kept is None else f" to {conn.address}"
        raise CliError(
            f"not signed in{where}: run hitl-grpc login (or set HITL_USERNAME and HITL_PASSWORD)",
            EXIT_UNAUTHENTICATED,
        )
    store = session.FileTokens(file, conn, kept.username)
    async with client(conn, store=store) as c:
        try:
            await c.signed_in()
            yield c
        except HitlClientError as exc:
            if exc.code is not grpc.StatusCode.UNAUTHENTICATED:
                raise
            # Dead for good (expired, revoked, or replayed and so revoked): trying it again
            # would only count against this address's refresh limit.
            session.remove(file)
            raise CliError(SESSION_EXPIRED, EXIT_UNAUTHENTICATED) from None


def describe(exc: HitlClientError) -> str:
    """One line for a failed call: what kind of failure, and the server's words."""
    kind = exc.code.name.lower().replace("_", " ")
    text = exc.message or kind
    violations = "; ".join(f"{v.field}: {v.description}" for v in exc.field_violations)
    if violations and violations not in text:
        text = f"{text} ({violations})"
    retry = exc.retry_delay_s
    if retry is not None:
        text = f"{text} (retry in {retry:g} s)"
    return f"{kind}: {text}"


def run(prog: str, body: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Runs a command's coroutine; any failure becomes one line on stderr and its status."""
    try:
        return asyncio.run(body())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (`| head`) has gone: say nothing more, and let exit not flush again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_REFUSED
    except CliError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except HitlClientError as exc:
        print(f"{prog}: {describe(exc)}", file=sys.stderr)
        return EXIT_OF.get(exc.code, EXIT_REFUSED)
    except session.SessionFileError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
