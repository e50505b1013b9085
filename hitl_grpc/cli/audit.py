"""`hitl-grpc audit list`: the audit trail over the API (AuditService.ListAuditEvents, admin).

`add_parser` returns the group's subcommands, so that other `audit` commands (e.g. one that
works on the database directly) add themselves beside `list`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from google.protobuf import timestamp_pb2
from hitl.v1 import audit_pb2

from hitl_grpc.cli import remote, render

PROG: Final = "hitl-grpc audit"
OUTCOME: Final = audit_pb2.AuditOutcome.DESCRIPTOR
# The server's page cap.
MAX_PAGE: Final = 1000
_AGO: Final = re.compile(r"([0-9]+)([smhd])")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _time(text: str) -> timestamp_pb2.Timestamp:
    """An ISO 8601 time (UTC unless it says otherwise), or an age such as 30m, 24h, 7d."""
    ago = _AGO.fullmatch(text.strip())
    try:
        if ago:
            at = datetime.now(UTC) - timedelta(seconds=int(ago[1]) * _UNIT_S[ago[2]])
        else:
            at = datetime.fromisoformat(text.strip())
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a time like 2026-12-01T09:00 or an age like 30m, 24h, 7d"
        ) from None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def add_parser(sub: Any) -> Any:
    """Adds `audit` and `audit list`; returns the group's subcommands for more to join."""
    audit = sub.add_parser("audit", help="the audit trail", description=__doc__)
    cmd = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    listing = cmd.add_parser(
        "list",
        help="audit events over the API (admin), newest first",
        description="Audit events over the API (admin), newest first, page after page.",
    )
    listing.add_argument("--actor", default="", help="only events by this user (or 'cli')")
    listing.add_argument("--kind", default="", help="only this kind, e.g. auth.login")
    listing.add_argument("--target", default="", help="only events about this user or decision")
    listing.add_argument("--since", type=_time, help="from this time (ISO 8601, or 30m, 24h, 7d)")
    listing.add_argument("--until", type=_time, help="before this time")
    listing.add_argument("--limit", type=int, default=0, help="at most this many (default all)")
    listing.add_argument("--page-token", default="", help="go on from where an earlier list left")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    remote.add_options(listing)
    return cmd


def _row(event: audit_pb2.AuditEvent) -> list[object]:
    details = " ".join(f"{k}={v}" for k, v in sorted(event.details.items()))
    return [
        event.id,
        render.when(event.time),
        event.actor or "-",
        event.kind,
        event.target or "-",
        event.peer or "-",
        render.short(OUTCOME, event.outcome),
        details or "-",
    ]


async def _list(args: argparse.Namespace) -> int:
    request = audit_pb2.ListAuditEventsRequest(
        actor=args.actor,
        kind=args.kind,
        target=args.target,
        since=args.since,
        until=args.until,
        page_token=args.page_token,
    )
    found: list[audit_pb2.AuditEvent] = []
    next_token = ""
    async with remote.signed_in(args) as client:
        while True:
            left = args.limit - len(found) if args.limit else MAX_PAGE
            request.page_size = min(left, MAX_PAGE)
            page = await client.list_audit_events_page(request)
            found += page.events
            next_token = page.next_page_token
            if not next_token or (args.limit and len(found) >= args.limit):
                break
            request.page_token = next_token
    if args.json:
        body = {"events": [render.to_dict(e) for e in found], "next_page_token": next_token}
        print(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        headers = ["ID", "TIME", "ACTOR", "KIND", "TARGET", "PEER", "OUTCOME", "DETAILS"]
        print(render.table(headers, [_row(e) for e in found]))
        if next_token:
            print(f"more: --page-token {next_token}", file=sys.stderr)
    return remote.EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Runs `audit list`; its exit status."""
    return remote.run(PROG, lambda: _list(args))
