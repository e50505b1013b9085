"""`hitl-grpc login | logout | whoami | mfa setup`: the signed-in session a shell keeps."""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Any, Final

import grpc
import segno
from hitl.v1 import access_pb2, auth_pb2

from hitl_grpc.cli import remote, render, session
from hitl_grpc.client import HitlClientError

ROLE: Final = access_pb2.Role.DESCRIPTOR


def add_parsers(sub: Any) -> None:
    """Adds `login`, `logout`, `whoami` and `mfa` to the top-level parser."""
    login = sub.add_parser(
        "login",
        help="sign in and keep the session for the other commands",
        description="Signs in (password and, if the account has MFA, a code: both hidden) and "
        "keeps the session in $XDG_CONFIG_HOME/hitl-grpc/session.json (default ~/.config), "
        "readable by you only. Commands refresh it silently until it expires.",
    )
    login.add_argument("--username", help="default: HITL_USERNAME, else asked")
    remote.add_options(login)
    sub.add_parser("logout", help="revoke the kept session on the server and forget it")
    who = sub.add_parser("whoami", help="the signed-in account")
    who.add_argument("--json", action="store_true", help="print JSON for scripts")
    remote.add_options(who)
    mfa = sub.add_parser("mfa", help="your own second factor (TOTP)")
    cmd = mfa.add_subparsers(dest="mfa_command", required=True, metavar="COMMAND")
    setup = cmd.add_parser(
        "setup",
        help="enrol an authenticator: prints its QR code and backup codes, then confirms a code",
    )
    remote.add_options(setup)
    confirm = cmd.add_parser("confirm", help="turn MFA on with a code, if setup was interrupted")
    remote.add_options(confirm)


def _user_line(user: auth_pb2.User) -> str:
    mfa = "mfa on" if user.mfa_enabled else "mfa off"
    state = "active" if user.active else "inactive"
    return f"{user.username} ({render.short(ROLE, user.role)}, {state}, {mfa})"


async def _login(args: argparse.Namespace) -> int:
    env = os.environ
    file = session.path(env)
    try:
        kept = session.load(file)
    except session.SessionFileError:
        kept = None  # replaced below
    conn = remote.connection(args, kept, env)
    username = args.username or env.get("HITL_USERNAME") or ""
    if not username:
        print("username: ", end="", file=sys.stderr, flush=True)
        username = sys.stdin.readline().strip()
    password = env.get("HITL_PASSWORD") or remote.ask_secret("password: ")
    async with remote.client(
        conn, username=username, password=password, mfa_code=remote.ask_mfa_code
    ) as client:
        await client.login()
        user = await client.current_user()
        # Kept only now: the call above may have rotated the pair already (a short TTL).
        tokens = client.tokens
        assert tokens is not None
        with session.locked(file):
            session.save(file, session.Session(conn, username, tokens))
    print(f"signed in to {conn.address} as {_user_line(user)}")
    print(f"session kept in {file} until {render.when(tokens.refresh_expires_at)}")
    return remote.EXIT_OK


async def _logout(args: argparse.Namespace) -> int:
    file = session.path(os.environ)
    kept = session.load(file)
    if kept is None:
        print("not signed in")
        return remote.EXIT_OK
    store = session.FileTokens(file, kept.connection, kept.username)
    async with remote.client(kept.connection, store=store) as client:
        try:
            await client.logout()
        except HitlClientError as exc:
            if exc.code is not grpc.StatusCode.UNAUTHENTICATED:
                raise  # unreachable: the file stays, so that logout can be tried again
            session.remove(file)
            print(f"the session of {kept.username} at {kept.connection.address} had already ended")
            return remote.EXIT_OK
    session.remove(file)
    print(f"signed out {kept.username} at {kept.connection.address}; session revoked")
    return remote.EXIT_OK


async def _whoami(args: argparse.Namespace) -> int:
    async with remote.signed_in(args) as client:
        user = await client.current_user()
    print(render.dumps(user) if args.json else _user_line(user))
    return remote.EXIT_OK


def qr_text(uri: str) -> str:
    """The otpauth URI as a QR code of text blocks, for a terminal."""
    out = io.StringIO()
    segno.make(uri, error="m").terminal(out=out, compact=True)
    return out.getvalue()


async def _mfa(args: argparse.Namespace) -> int:
    async with remote.signed_in(args) as client:
        if args.mfa_command == "setup":
            password = os.environ.get("HITL_PASSWORD") or remote.ask_secret("password: ")
            setup = await client.setup_mfa(password)
            print("Scan this with your authenticator app:\n")
            print(qr_text(setup.otpauth_uri))
            print(f"or enter it by hand: {setup.otpauth_uri}")
            print(f"secret: {setup.secret}\n")
            print("Backup codes (each works once; shown only now, keep them safe):")
            for code in setup.backup_codes:
                print(f"  {code}")
            print(flush=True)
        code = remote.ask_secret("code from the authenticator: ")
        user = await client.confirm_mfa(code.strip())
    print(f"MFA is on for {_user_line(user)}")
    return remote.EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Runs `login`, `logout`, `whoami` or `mfa ...`; its exit status."""
    body = {"login": _login, "logout": _logout, "whoami": _whoami, "mfa": _mfa}[args.command]
    return remote.run(f"hitl-grpc {args.command}", lambda: body(args))
