"""`hitl-grpc users ...` over the API: the same commands as `--direct`, made by the server
as the signed-in admin (AuthService CreateUser, ListUsers, UpdateUser, UnlockUser,
ResetUserMfa)."""

from __future__ import annotations

import argparse
import json
from typing import Final

from hitl.v1 import access_pb2, auth_pb2

from hitl_grpc.cli import remote, render, users
from hitl_grpc.client import HitlClient

PROG: Final = "hitl-grpc users"
ROLE: Final = access_pb2.Role.DESCRIPTOR


def _line(user: auth_pb2.User) -> str:
    # The same tab-separated line as --direct prints, so scripts read both alike.
    state = "active" if user.active else "inactive"
    mfa = "mfa" if user.mfa_enabled else "-"
    subject = user.certificate_subject or "-"
    role = render.short(ROLE, user.role)
    return render.plain(f"{user.username}\t{role}\t{state}\t{mfa}\t{user.id}\t{subject}")


def _role(name: str) -> access_pb2.Role.ValueType:
    return access_pb2.Role.Value(f"ROLE_{name.upper()}")


async def _find(client: HitlClient, username: str) -> auth_pb2.User:
    wanted = username.casefold()
    async for user in client.list_users(page_size=500):
        if user.username.casefold() == wanted:
            return user
    raise remote.CliError(f"not found: no user {username!r}", remote.EXIT_NOT_FOUND)


async def _run(args: argparse.Namespace) -> int:
    command = args.users_command
    async with remote.signed_in(args) as client:
        if command == "list":
            found = [u async for u in client.list_users(page_size=500)]
            if args.json:
                print(json.dumps([render.to_dict(u) for u in found], ensure_ascii=False, indent=2))
            else:
                for user in found:
                    print(_line(user))
            return remote.EXIT_OK
        if command == "create":
            password, generated = users.read_password(args)
            user = await client.create_user(
                args.username,
                password,
                _role(args.role),
                email=args.email,
                full_name=args.full_name,
                certificate_subject=args.certificate_subject,
            )
            print(f"created {_line(user)}")
            if generated:
                print(f"password: {password} (shown once)")
            return remote.EXIT_OK
        if command == "unlock":
            print(f"unlocked {_line(await client.unlock_user(args.username, peer=args.peer))}")
            return remote.EXIT_OK
        target = await _find(client, args.username)
        if command == "reset-mfa":
            print(f"reset MFA of {_line(await client.reset_user_mfa(target.id))}")
            return remote.EXIT_OK
        generated, password = False, ""
        if command == "set-role":
            updated = await client.update_user(target.id, role=_role(args.role))
        elif command in ("deactivate", "activate"):
            updated = await client.update_user(target.id, active=command == "activate")
        elif command == "set-certificate":
            subject = users.subject_of(args)
            updated = await client.update_user(target.id, certificate_subject=subject)
        else:
            password, generated = users.read_password(args)
            updated = await client.update_user(target.id, new_password=password)
        print(f"updated {_line(updated)}")
        if generated:
            print(f"password: {password} (shown once)")
        return remote.EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Runs one `users` subcommand over the API; its exit status."""
    return remote.run(PROG, lambda: _run(args))
