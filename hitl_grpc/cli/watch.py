"""`hitl-grpc watch`: a live terminal view of the pending queue, resuming across restarts."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import math
import os
import sys
from datetime import UTC, datetime

import grpc
from hitl.v1 import decision_pb2
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from hitl_grpc.client import Backoff, HitlClient, HitlClientError, PendingChange

PRIORITY_STYLE = {
    decision_pb2.PRIORITY_CRITICAL: ("CRITICAL", "bold red"),
    decision_pb2.PRIORITY_HIGH: ("HIGH", "red"),
    decision_pb2.PRIORITY_MEDIUM: ("MEDIUM", "yellow"),
    decision_pb2.PRIORITY_LOW: ("LOW", "green"),
}


class QueueView:
    """The open set as the watch stream describes it."""

    def __init__(self) -> None:
        self.items: dict[str, decision_pb2.Decision] = {}
        self.live = False
        self.changes = 0
        self.last_change = ""

    def apply(self, change: PendingChange) -> None:
        """Folds one change into the view."""
        if change.kind == "resync":
            self.items.clear()
            self.live = False
        elif change.kind == "snapshot_complete":
            self.live = True
        elif change.kind == "removed":
            self.items.pop(change.analysis_id, None)
            status = decision_pb2.DecisionStatus.Name(change.final_status)  # type: ignore[arg-type]
            self.last_change = f"{change.analysis_id} left the queue ({status})"
        elif change.decision is not None:
            self.items[change.decision.analysis_id] = change.decision
            self.last_change = f"{change.decision.analysis_id} {change.kind}"
        self.changes += 1

    def render(self) -> Group:
        """The queue as a table, most urgent first."""
        table = Table(title=f"pending decisions: {len(self.items)}", expand=True)
        for column in ("priority", "analysis", "status", "actor", "claimed by", "age"):
            table.add_column(column)
        now = datetime.now(UTC)
        ordered = sorted(
            self.items.values(),
            key=lambda d: (d.priority, d.created_at.ToDatetime(), d.analysis_id),
        )
        for d in ordered:
            name, style = PRIORITY_STYLE.get(d.priority, ("?", ""))
            age = now - d.created_at.ToDatetime(tzinfo=UTC)
            table.add_row(
                Text(name, style=style),
                d.analysis_id,
                decision_pb2.DecisionStatus.Name(d.status).removeprefix("DECISION_STATUS_"),
                d.attributed_actor[:40],
                d.claimed_by or "-",
                f"{int(age.total_seconds() // 60)} min",
            )
        state = "live" if self.live else "loading snapshot"
        return Group(table, Text(f"{state} · {self.changes} changes · {self.last_change}"))


async def _watch(
    client: HitlClient, priorities: list[decision_pb2.Priority.ValueType], console: Console
) -> None:
    view = QueueView()
    with Live(view.render(), console=console, refresh_per_second=4) as live:
        async for change in client.watch_pending(priorities):
            view.apply(change)
            live.update(view.render())


def run(args: argparse.Namespace) -> int:
    """Runs the view until interrupted."""
    username = args.username or os.environ.get("HITL_USERNAME") or input("username: ")
    password = os.environ.get("HITL_PASSWORD") or getpass.getpass("password: ")

    async def mfa_code() -> str:
        return await asyncio.to_thread(input, "MFA code: ")

    credentials = None
    if args.ca_file:
        with open(args.ca_file, "rb") as ca:
            credentials = grpc.ssl_channel_credentials(ca.read())
    priorities = [decision_pb2.Priority.Value(f"PRIORITY_{p.upper()}") for p in args.priority]

    async def main() -> None:
        async with HitlClient(
            args.address,
            username=username,
            password=password,
            mfa_code=mfa_code,
            credentials=credentials,
            # A terminal view keeps trying through restarts and failovers.
            backoff=Backoff(max_s=5.0, budget_s=math.inf),
        ) as client:
            await _watch(client, priorities, Console())

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except HitlClientError as exc:
        print(f"hitl-grpc watch: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `watch` subcommand's arguments."""
    watch = sub.add_parser("watch", help="live view of the pending queue (resumes on restarts)")
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
