"""`hitl-grpc users ...`: account administration, over the API or (`--direct`) on the database.

Over the API (the default) it is an admin's everyday tool: signed in like every remote
command, each change made and audited by the server as that admin.

`--direct` is the recovery mode: it opens the configured database (HITL_DATABASE_URL) with no
server, for the first admin and for a locked-out or forgotten one. Every change is audited
like its RPC, with actor `cli` and peer `local`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hitl_grpc import accounts
from hitl_grpc.accounts.users import NewUser, UserAdmin, UserUpdate
from hitl_grpc.cli import remote
from hitl_grpc.config import Settings
from hitl_grpc.domain import request_id
from hitl_grpc.domain.clock import SystemClock
from hitl_grpc.domain.errors import DomainError
from hitl_grpc.domain.values import Role, User
from hitl_grpc.runtime.errors import StartupError

ACTOR = "cli"
PEER = "local"
ROLES = [r.name.lower() for r in Role]


def add_parser(sub: Any) -> None:
    """Adds `users` and its subcommands to the top-level parser."""
    users = sub.add_parser(
        "users",
        help="manage accounts over the API (admin), or --direct on the database (recovery)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    users.add_argument(
        "--direct",
        action="store_true",
        help="RECOVERY: work on the database HITL_DATABASE_URL names, no server or sign-in",
    )
    cmd = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")

    def leaf(name: str, text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = cmd.add_parser(name, help=text, description=text)
        remote.add_options(parser)
        return parser

    create = leaf("create", "create an account")
    create.add_argument("username")
    create.add_argument("--role", choices=ROLES, required=True)
    create.add_argument("--email", default="")
    create.add_argument("--full-name", default="")
    create.add_argument(
        "--certificate-subject",
        default="",
        metavar="DN",
        help="bind a SERVICE account to this client-certificate subject (RFC 2253, e.g. "
        "CN=candi,O=SOC); it then needs no password and gets none unless --password-stdin",
    )
    _password_option(create)
    listing = leaf("list", "list every account")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    set_role = leaf("set-role", "change an account's role")
    set_role.add_argument("username")
    set_role.add_argument("role", choices=ROLES)
    for name, text in (("deactivate", "deactivate"), ("activate", "reactivate")):
        parser = leaf(name, f"{text} an account (ends its sessions at once)")
        parser.add_argument("username")
    reset = leaf("reset-password", "set a new password; ends every session and lifts the lockout")
    reset.add_argument("username")
    _password_option(reset)
    unlock = leaf("unlock", "lift an account's sign-in lockout (password and MFA)")
    unlock.add_argument("username")
    unlock.add_argument(
        "--peer", default="", help="also lift this client address's lock (e.g. 10.0.0.7)"
    )
    reset_mfa = leaf(
        "reset-mfa", "turn an account's MFA off, drop its backup codes, end its sessions"
    )
    reset_mfa.add_argument("username")
    bind = leaf(
        "set-certificate", "bind a SERVICE account to a client-certificate subject, or --clear"
    )
    bind.add_argument("username")
    which = bind.add_mutually_exclusive_group(required=True)
    which.add_argument("subject", nargs="?", metavar="DN", help="e.g. CN=candi,O=SOC")
    which.add_argument("--clear", action="store_true", help="unbind the account's certificate")


def _password_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (default: generate one and print it once)",
    )


def read_password(args: argparse.Namespace) -> tuple[str, bool]:
    """The password from stdin, or a generated one (and True: print it once).

    An account created bound to a certificate gets none ("") unless one is piped in: the
    server gives it one nobody knows, so it signs in by certificate only.
    """
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    if getattr(args, "certificate_subject", ""):
        return "", False
    return secrets.token_urlsafe(18), True


def subject_of(args: argparse.Namespace) -> str:
    """The subject `set-certificate` binds; "" to unbind."""
    return "" if args.clear else str(args.subject)


@asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[UserAdmin]:
    # The server's door and use cases: the same database deadline, audit and rules.
    from hitl_grpc.runtime.server import hashing_pool, open_store
    from hitl_grpc.store.uow import UnitOfWorkFactory

    door = await open_store(settings)
    pool = hashing_pool()
    try:
        yield accounts.build(settings, UnitOfWorkFactory(door), SystemClock(), pool).users
    finally:
        pool.shutdown(wait=False)
        await door.engine.dispose()


def user_json(user: User) -> dict[str, object]:
    """An account as `users list --json` prints it, in both modes: the proto JSON names."""
    return {
        "id": str(user.id),
        "username": user.username,
        "role": f"ROLE_{user.role.name}",
        "email": user.email,
        "full_name": user.full_name,
        "active": user.active,
        "mfa_enabled": user.mfa_enabled,
        "created_at": user.created_at.isoformat().replace("+00:00", "Z"),
        "certificate_subject": user.certificate_subject,
    }


def _line(user: User) -> str:
    state = "active" if user.active else "inactive"
    mfa = "mfa" if user.mfa_enabled else "-"
    subject = user.certificate_subject or "-"
    return f"{user.username}\t{user.role.name.lower()}\t{state}\t{mfa}\t{user.id}\t{subject}"


async def _run(args: argparse.Namespace, settings: Settings) -> None:
    async with _admin(settings) as admin:
        command = args.users_command
        if command == "list":
            after: str | None = None
            found: list[User] = []
            while True:
                page, after = await admin.list_page(500, after)
                found += page
                if after is None:
                    break
            if args.json:
                print(json.dumps([user_json(u) for u in found], ensure_ascii=False, indent=2))
            else:
                for user in found:
                    print(_line(user))
            return
        if command == "create":
            password, generated = read_password(args)
            user = await admin.create(
                NewUser(
                    username=args.username,
                    password=password,
                    role=Role[args.role.upper()],
                    email=args.email,
                    full_name=args.full_name,
                    certificate_subject=args.certificate_subject,
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
        elif command == "set-certificate":
            change = UserUpdate(certificate_subject=subject_of(args))
        else:
            password, generated = read_password(args)
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
