"""`hitl-grpc decisions ...`: the queue over the API, as an analyst works it from a shell.

`follow ID` streams a decision's states until its verdict and exits by outcome:
0 approved, 10 rejected, 11 expired (other failures exit as every remote command does).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from hitl.v1 import decision_pb2

from hitl_grpc.cli import remote, render
from hitl_grpc.client import HitlClient

PROG: Final = "hitl-grpc decisions"
PRIORITY: Final = decision_pb2.Priority.DESCRIPTOR
STATUS: Final = decision_pb2.DecisionStatus.DESCRIPTOR
ACTION: Final = decision_pb2.ActionType.DESCRIPTOR
OPEN_STATUSES: Final = ["pending", "in_review", "escalated"]
EXIT_REJECTED: Final = 10
EXIT_EXPIRED: Final = 11
FOLLOW_EXIT: Final = {
    decision_pb2.DECISION_STATUS_APPROVED: remote.EXIT_OK,
    decision_pb2.DECISION_STATUS_REJECTED: EXIT_REJECTED,
    decision_pb2.DECISION_STATUS_EXPIRED: EXIT_EXPIRED,
}


def _action(text: str) -> decision_pb2.Action:
    kind, sep, target = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected TYPE:TARGET, e.g. block_ip:10.0.0.7")
    try:
        number = render.parse(ACTION, kind)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return decision_pb2.Action(type=number, target=target)  # type: ignore[arg-type]


def add_parser(sub: Any) -> None:
    """Adds `decisions` and its subcommands to the top-level parser."""
    decisions = sub.add_parser(
        "decisions",
        help="list, show, claim, decide and follow decisions over the API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd = decisions.add_subparsers(dest="decisions_command", required=True, metavar="COMMAND")

    def leaf(name: str, text: str, *, with_id: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = cmd.add_parser(name, help=text, description=text)
        if with_id:
            parser.add_argument("analysis_id", metavar="ID", help="the decision's analysis id")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        remote.add_options(parser)
        return parser

    def versioned(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--expected-version",
            type=int,
            help="refuse (exit 1) if the decision has changed since this version",
        )

    listing = leaf("list", "the open queue, most urgent first", with_id=False)
    listing.add_argument(
        "--priority", action="append", default=[], choices=render.values(PRIORITY),
        help="only this priority (repeatable)",
    )  # fmt: skip
    listing.add_argument(
        "--status", action="append", default=[], choices=OPEN_STATUSES,
        help="only this open status (repeatable)",
    )  # fmt: skip
    listing.add_argument("--limit", type=int, default=0, help="at most this many (default all)")
    leaf("show", "one decision: the analysis, its state and its resolution")
    versioned(leaf("claim", "put a decision under review by you (for the claim lease)"))
    versioned(leaf("release", "give a claimed decision back to the queue"))
    approve = leaf("approve", "approve a decision with the actions to carry out")
    approve.add_argument(
        "--action", action="append", default=[], type=_action, metavar="TYPE:TARGET",
        help="an action to carry out (repeatable); TYPE is one of "
        + ", ".join(render.values(ACTION)),
    )  # fmt: skip
    approve.add_argument(
        "--recommended", action="store_true", help="approve every recommended action as it is"
    )
    approve.add_argument("--note", default="", help="why")
    versioned(approve)
    reject = leaf("reject", "reject a decision: nothing is carried out")
    reject.add_argument("--note", default="", help="why")
    versioned(reject)
    escalate = leaf("escalate", "hand a decision up to an admin")
    escalate.add_argument("--reason", required=True, help="why it needs an admin")
    versioned(escalate)
    leaf(
        "follow",
        "print each change until the verdict; exit 0 approved, 10 rejected, 11 expired",
    )
    leaf(
        "stats", "the queue's figures: open by priority, outcomes, time to decision", with_id=False
    )


def _row(d: decision_pb2.Decision, now: datetime) -> list[object]:
    return [
        d.analysis_id,
        render.short(PRIORITY, d.priority),
        render.short(STATUS, d.status),
        render.age(d.created_at, now),
        render.until(d.sla_deadline, now),
        d.claimed_by or "-",
        f"{d.confidence:g}",
        _clip(d.attributed_actor, 40),
    ]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _actions(actions: Iterable[decision_pb2.Action]) -> str:
    listed = [
        render.short(ACTION, a.type) + (f":{a.target}" if a.target else "")
        + (f" ({a.description})" if a.description else "")
        for a in actions
    ]  # fmt: skip
    return ", ".join(listed) or "-"


def _show(d: decision_pb2.Decision) -> str:
    now = datetime.now(UTC)
    pairs: list[tuple[str, object]] = [
        ("analysis", d.analysis_id),
        ("incident", d.incident_id or "-"),
        ("status", render.short(STATUS, d.status)),
        ("priority", render.short(PRIORITY, d.priority)),
        ("version", d.version),
        ("threat level", d.threat_level or "-"),
        ("source ip", d.source_ip or "-"),
        ("actor", d.attributed_actor or "-"),
        ("confidence", f"{d.confidence:g}"),
        ("iocs", ", ".join(d.iocs) or "-"),
        ("ttps", ", ".join(d.ttps) or "-"),
        ("recommended", _actions(d.recommended_actions)),
        ("summary", d.forensic_summary or "-"),
        ("detected", render.when(d.detected_at)),
        ("submitted", f"{render.when(d.created_at)} by {d.submitted_by or '-'}"),
        ("updated", render.when(d.updated_at)),
        ("sla deadline", f"{render.when(d.sla_deadline)} ({render.until(d.sla_deadline, now)})"),
        ("expires", render.when(d.expires_at)),
        ("claimed by", d.claimed_by or "-"),
        ("claim expires", render.when(d.claim_expires_at)),
    ]
    if d.HasField("resolution"):
        r = d.resolution
        pairs += [
            ("resolution", render.short(STATUS, r.status)),
            ("decided by", f"{r.decided_by or '-'} at {render.when(r.decided_at)}"),
            ("approved", _actions(r.approved_actions)),
            ("notes", r.notes or "-"),
            ("escalation", r.escalation_reason or "-"),
        ]
    return render.fields(pairs)


def _stats(s: decision_pb2.GetDecisionStatsResponse) -> str:
    by = {c.priority: c.count for c in s.pending_by_priority}
    open_rows = [[render.short(PRIORITY, p), by.get(p, 0)] for p in range(1, 5)]  # type: ignore[call-overload]
    state_rows = [["pending", s.pending], ["in_review", s.in_review], ["escalated", s.escalated]]
    windows = [("last 24h", s.last_24h), ("all time", s.all_time)]
    names = ["submitted", "approved", "rejected", "escalated", "expired", "decided", "sla_breaches"]
    figures = [[n, *(getattr(w, n) for _, w in windows)] for n in names]
    for n in ("avg_time_to_decision", "p50_time_to_decision", "p90_time_to_decision"):
        figures.append([n, *(render.duration(getattr(w, n)) for _, w in windows)])
    return "\n\n".join(
        [
            render.table(["PRIORITY", "OPEN"], open_rows),
            render.table(["STATE", "COUNT"], state_rows),
            render.table(["FIGURE", *(label.upper() for label, _ in windows)], figures),
        ]
    )


def _done(verb: str, d: decision_pb2.Decision) -> str:
    return f"{verb} {d.analysis_id}: {render.short(STATUS, d.status)}, version {d.version}"


async def _follow(args: argparse.Namespace) -> int:
    async with remote.signed_in(args) as client:
        last: decision_pb2.Decision | None = None
        async for decision in client.watch_decision(args.analysis_id):
            last = decision
            if args.json:
                print(json.dumps(render.to_dict(decision), ensure_ascii=False), flush=True)
                continue
            who = decision.resolution.decided_by or decision.claimed_by
            print(
                f"{render.when(decision.updated_at)}  {render.short(STATUS, decision.status)}"
                f"  version {decision.version}" + (f"  by {who}" if who else ""),
                flush=True,
            )
    assert last is not None  # the stream ends only at a terminal state
    return FOLLOW_EXIT.get(last.status, remote.EXIT_REFUSED)


async def _run(args: argparse.Namespace) -> int:
    command = args.decisions_command
    if command == "follow":
        return await _follow(args)
    async with remote.signed_in(args) as client:
        if command == "list":
            priorities = [render.parse(PRIORITY, p) for p in args.priority]
            statuses = [render.parse(STATUS, s) for s in args.status]
            found: list[decision_pb2.Decision] = []
            async for d in client.list_pending(priorities, statuses=statuses):  # type: ignore[arg-type]
                found.append(d)
                if args.limit and len(found) >= args.limit:
                    break
            if args.json:
                print(render.dumps(found))
            else:
                now = datetime.now(UTC)
                headers = ["ID", "PRIORITY", "STATUS", "AGE", "SLA", "CLAIMED BY", "CONF", "ACTOR"]
                print(render.table(headers, [_row(d, now) for d in found]))
            return remote.EXIT_OK
        if command == "stats":
            stats = await client.decision_stats()
            print(render.dumps(stats) if args.json else _stats(stats))
            return remote.EXIT_OK
        decision = await _change(client, command, args)
        if args.json:
            print(render.dumps(decision))
        elif command == "show":
            print(_show(decision))
        else:
            print(_done(_VERBS[command], decision))
        return remote.EXIT_OK


_VERBS: Final = {
    "claim": "claimed",
    "release": "released",
    "approve": "approved",
    "reject": "rejected",
    "escalate": "escalated",
}


async def _change(
    client: HitlClient, command: str, args: argparse.Namespace
) -> decision_pb2.Decision:
    analysis_id = args.analysis_id
    if command == "show":
        return await client.get_decision(analysis_id)
    version = args.expected_version
    if command == "claim":
        return await client.claim_decision(analysis_id, expected_version=version)
    if command == "release":
        return await client.release_decision(analysis_id, expected_version=version)
    if command == "approve":
        actions = list(args.action)
        if args.recommended:
            current = await client.get_decision(analysis_id)
            actions += list(current.recommended_actions)
        return await client.approve(analysis_id, actions, notes=args.note, expected_version=version)
    if command == "reject":
        return await client.reject(analysis_id, notes=args.note, expected_version=version)
    return await client.escalate_decision(analysis_id, args.reason, expected_version=version)


def run(args: argparse.Namespace) -> int:
    """Runs one `decisions` subcommand; its exit status."""
    return remote.run(PROG, lambda: _run(args))
