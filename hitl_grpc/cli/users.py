"""`hitl-grpc users ...`: account administration on the configured database, no server needed.

For the first admin and for recovery (a locked-out or forgotten admin). Every change is
audited like its RPC, with actor `cli` and peer `local`.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hitl_grpc import accounts
from hitl_grpc.accounts.users import NewUser, UserAdmin, UserUpdate
from hitl_grpc.config import Settings
from hitl_grpc.domain import request_id
from hitl_grpc.domain.clock import SystemClock
from hitl_grpc.domain.errors import DomainError
from hitl_grpc.domain.values import Role, User
from hitl_grpc.runtime.server import StartupError, hashing_pool, open_store
from hitl_grpc.store.uow import UnitOfWorkFactory

ACTOR = "cli"
PEER = "local"
ROLES = [r.name.lower() for r in Role]


def add_parser(sub: Any) -> None:
    """Adds `users` and its subcommands to the top-level parser."""
    users = sub.add_parser("users", help="manage accounts on the configured database")
    cmd = users.add_subparsers(dest="users_command", required=True)
    create = cmd.add_parser("create", help="create an account")
    create.add_argument("username")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--email", default="")
    create.add_argument("--full-name", default="")
    _password_option(create)
    cmd.add_parser("list", help="list every account")
    set_role = cmd.add_parser("set-role", help="change an account's role")
    set_role.add_argument("username")
    set_role.add_argument("role", choices=ROLES)
    for name, text in (("deactivate", "deactivate"), ("activate", "reactivate")):
        parser = cmd.add_parser(name, help=f"{text} an account (ends its sessions at once)")
        parser.add_argument("username")
    reset = cmd.add_parser(
        "reset-password", help="set a new password; ends every session and lifts the lockout"
    )
    reset.add_argument("username")
    _password_option(reset)
    unlock = cmd.add_parser("unlock", help="lift an account's sign-in lockout (password and MFA)")
    unlock.add_argument("username")
    unlock.add_argument(
        "--peer", default="", help="also lift this client address's lock (e.g. 10.0.0.7)"
    )
    reset_mfa = cmd.add_parser(
        "reset-mfa", help="turn an account's MFA off, drop its backup codes, end its sessions"
    )
    reset_mfa.add_argument("username")


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (default: generate one and print it once)",
    )


def _password(args: argparse.Namespace) -> tuple[str, bool]:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    return secrets.token_urlsafe(18), True


@asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[UserAdmin]:
    # The server's door and use cases: the same database deadline, audit and rules.
    door = await open_store(settings)
    pool = hashing_pool()
    try:
        yield accounts.build(settings, UnitOfWorkFactory(door), SystemClock(), pool).users
    finally:
        pool.shutdown(wait=False)
        await door.engine.dispose()


def _line(user: User) -> str:
    state = "active" if user.active else "inactive"
    mfa = "mfa" if user.mfa_enabled else "-"
    return f"{user.username}\t{user.role.name.lower()}\t{state}\t{mfa}\t{user.id}"


async def _run(args: argparse.Namespace, settings: Settings) -> None:
    async with _admin(settings) as admin:
        command = args.users_command
        if command == "list":
            after: str | None = None
            while True:
                page, after = await admin.list_page(500, after)
                for user in page:
                    print(_line(user))
                if after is None:
                    return
        if command == "create":
            password, generated = _password(args)
            user = await admin.create(
                NewUser(
                    username=args.username,
                    password=password,
                    role=Role[args.role.upper()],
                    email=args.email,
                    full_name=args.full_name,
                ),
                actor=ACTOR,
                peer=PEER,
            )
            print(f"created {_line(user)}")
            if generated:
                print(f"password: {password} (shown once)")
            return
        user = await admin.find(args.username)
        if command == "unlock":
            unlocked = await admin.unlock(user.id, "", args.peer, actor=ACTOR, peer=PEER)
            print(f"unlocked {_line(unlocked)}")
            return
        if command == "reset-mfa":
            print(f"reset MFA of {_line(await admin.reset_mfa(user.id, actor=ACTOR, peer=PEER))}")
            return
        if command == "set-role":
            change = UserUpdate(role=Role[args.role.upper()])
        elif command in ("deactivate", "activate"):
            change = UserUpdate(active=command == "activate")
        else:
            password, generated = _password(args)
            change = UserUpdate(new_password=password)
        updated = await admin.update(user.id, change, actor=ACTOR, peer=PEER)
        print(f"updated {_line(updated)}")
        if command == "reset-password" and generated:
            print(f"password: {password} (shown once)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Runs one `users` subcommand; 1 with a one-line reason if it is refused."""
    try:
        # No call: the change's audit row carries an id of this invocation.
        with request_id.bound(f"cli-{uuid.uuid4().hex}"):
            asyncio.run(_run(args, settings))
    except DomainError as exc:
        print(f"hitl-grpc users: {exc.message}", file=sys.stderr)
        return 1
    except StartupError as exc:
        print(f"hitl-grpc: {exc}", file=sys.stderr)
        return 1
    return 0
