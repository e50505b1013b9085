"""`hitl-grpc watch`: the triage screen over the live pending queue."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

import grpc
from hitl.v1 import decision_pb2

from hitl_grpc.cli.watch.feed import STREAM_BACKOFF
from hitl_grpc.cli.watch.screen import ClientFactory, WatchApp
from hitl_grpc.client import HitlClient, MfaCode


def sign_in(args: argparse.Namespace) -> tuple[str, ClientFactory]:
    """Who the screen signs in as, and how it builds its client.

    HITL_USERNAME / HITL_PASSWORD, else prompts (before the screen takes the terminal);
    an MFA code is asked for on the screen, hidden, whenever a sign-in needs one.
    """
    username = args.username or os.environ.get("HITL_USERNAME") or input("username: ")
    password = os.environ.get("HITL_PASSWORD") or getpass.getpass("password: ")
    credentials = None
    if args.ca_file:
        with open(args.ca_file, "rb") as ca:
            credentials = grpc.ssl_channel_credentials(ca.read())

    def connect(mfa_code: MfaCode) -> HitlClient:
        # Built on the screen's event loop: a grpc.aio channel belongs to the loop it is made on.
        return HitlClient(
            args.address,
            username=username,
            password=password,
            mfa_code=mfa_code,
            credentials=credentials,
            backoff=STREAM_BACKOFF,
        )

    return username, connect


def run(args: argparse.Namespace) -> int:
    """Runs the screen until `q`; 1 when it cannot go on (refused sign-in, no access)."""
    try:
        who, connect = sign_in(args)
    except (EOFError, KeyboardInterrupt):
        return 1
    except OSError as exc:
        print(f"hitl-grpc watch: cannot read the CA file: {exc}", file=sys.stderr)
        return 1
    priorities = [decision_pb2.Priority.Value(f"PRIORITY_{p.upper()}") for p in args.priority]
    app = WatchApp(connect, address=args.address, who=who, priorities=priorities)
    app.run()
    return app.return_code or 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `watch` subcommand's arguments."""
    watch = sub.add_parser(
        "watch", help="triage screen: the live queue; claim, approve, reject, escalate"
    )
    watch.add_argument(
        "--address",
        default=os.environ.get("HITL_ADDRESS")
        or os.environ.get("HITL_LISTEN")
        or "127.0.0.1:50051",
        help="host:port (default: HITL_ADDRESS, HITL_LISTEN or 127.0.0.1:50051)",
    )
    watch.add_argument("--username", help="default: HITL_USERNAME; the password is HITL_PASSWORD")
    watch.add_argument(
        "--priority",
        action="append",
        default=[],
        choices=["critical", "high", "medium", "low"],
        help="only these priorities (repeatable)",
    )
    watch.add_argument("--ca-file", help="PEM CA bundle: connect with TLS")
