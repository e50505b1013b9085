"""`hitl-grpc watch`: the triage screen over the live pending queue."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TYPE_CHECKING

from hitl.v1 import decision_pb2

from hitl_grpc.cli import remote, session
from hitl_grpc.cli.watch.feed import STREAM_BACKOFF
from hitl_grpc.client import HitlClient, MfaCode

if TYPE_CHECKING:
    from hitl_grpc.cli.watch.screen import ClientFactory


def sign_in(args: argparse.Namespace) -> tuple[str, str, ClientFactory]:
    """Who the screen signs in as, where, and how it builds its client.

    HITL_USERNAME / HITL_PASSWORD (or --username) sign in afresh, prompting for what is
    missing before the screen takes the terminal; otherwise the session `hitl-grpc login`
    kept carries on. An MFA code is asked for on the screen, hidden, whenever a fresh
    sign-in needs one. The server: as for every command over the API (remote.connection).
    """
    env = os.environ
    username = args.username or env.get("HITL_USERNAME") or ""
    password = env.get("HITL_PASSWORD") or ""
    kept = None if (username or password) else session.load(session.path(env))
    conn = remote.connection(args, kept, env)
    credentials = remote.credentials(conn)
    if kept is not None and kept.connection.address == conn.address:
        store = session.FileTokens(session.path(env), conn, kept.username)

        def carry_on(mfa_code: MfaCode) -> HitlClient:
            # Built on the screen's loop: a grpc.aio channel belongs to the loop it is made on.
            return HitlClient(
                conn.address,
                store=store,
                credentials=credentials,
                server_name=conn.server_name,
                backoff=STREAM_BACKOFF,
            )

        return kept.username, conn.address, carry_on
    username = username or input("username: ")
    password = password or getpass.getpass("password: ")

    def connect(mfa_code: MfaCode) -> HitlClient:
        return HitlClient(
            conn.address,
            username=username,
            password=password,
            mfa_code=mfa_code,
            credentials=credentials,
            server_name=conn.server_name,
            backoff=STREAM_BACKOFF,
        )

    return username, conn.address, connect


def run(args: argparse.Namespace) -> int:
    """Runs the screen until `q`; 1 when it cannot go on (refused sign-in, no access)."""
    try:
        who, address, connect = sign_in(args)
    except (EOFError, KeyboardInterrupt):
        return 1
    except (remote.CliError, session.SessionFileError) as exc:
        print(f"hitl-grpc watch: {exc}", file=sys.stderr)
        return 1
    priorities = [decision_pb2.Priority.Value(f"PRIORITY_{p.upper()}") for p in args.priority]
    from hitl_grpc.cli.watch.screen import WatchApp  # textual loads only here

    app = WatchApp(connect, address=address, who=who, priorities=priorities)
    app.run()
    return app.return_code or 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `watch` subcommand's arguments."""
    watch = sub.add_parser(
        "watch", help="triage screen: the live queue; claim, approve, reject, escalate"
    )
    watch.add_argument("--username", help="default: HITL_USERNAME; the password is HITL_PASSWORD")
    watch.add_argument(
        "--priority",
        action="append",
        default=[],
        choices=["critical", "high", "medium", "low"],
        help="only these priorities (repeatable)",
    )
    remote.add_options(watch)
