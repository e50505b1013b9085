"""`hitl-grpc decisions ...`: the queue over the API, as an analyst works it from a shell.

`follow ID` streams a decision's states until its verdict and exits by outcome:
0 approved, 10 rejected, 11 expired (other failures exit as every remote command does).

`approve` or `reject` with several IDs is one bulk call (one note for all): one line per
item, and exit 0 only if every item succeeded, else 1.

Approving an action that needs step-up MFA (by default activate_killswitch and
deploy_countermeasure) takes a fresh TOTP code: `--otp CODE`, else it is asked for (hidden
on a terminal, one line of stdin otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import grpc
from hitl.v1 import decision_pb2

from hitl_grpc.cli import remote, render
from hitl_grpc.client import HitlClient, HitlClientError

T = TypeVar("T")

PROG: Final = "hitl-grpc decisions"
PRIORITY: Final = decision_pb2.Priority.DESCRIPTOR
STATUS: Final = decision_pb2.DecisionStatus.DESCRIPTOR
ACTION: Final = decision_pb2.ActionType.DESCRIPTOR
VERDICT: Final = decision_pb2.ActionVerdictStatus.DESCRIPTOR
OPEN_STATUSES: Final = ["pending", "in_review", "escalated"]
EXIT_REJECTED: Final = 10
EXIT_EXPIRED: Final = 11
FOLLOW_EXIT: Final = {
    decision_pb2.DECISION_STATUS_APPROVED: remote.EXIT_OK,
    decision_pb2.DECISION_STATUS_REJECTED: EXIT_REJECTED,
    decision_pb2.DECISION_STATUS_EXPIRED: EXIT_EXPIRED,
}
# How the server words a step-up refusal that only lacks the code (nothing is spent or
# counted against the lockout for it): the cue to ask for one and try again.
STEP_UP_MISSING: Final = "needs a fresh TOTP code: send it"
STEP_UP_PROMPT: Final = "step-up MFA code: "
# google.rpc.Code numbers, as a bulk call's results carry them.
STATUS_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}


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

    def leaf(
        name: str, text: str, *, with_id: bool = True, many: bool = False
    ) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = cmd.add_parser(name, help=text, description=text)
        if many:
            parser.add_argument(
                "analysis_ids",
                metavar="ID",
                nargs="+",
                help="the decision's analysis id; several make one bulk call (up to 100)",
            )
        elif with_id:
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

    def fenced(parser: argparse.ArgumentParser) -> None:
        versioned(parser)
        parser.add_argument(
            "--lease-epoch",
            type=int,
            help="refuse (exit 1) unless your lease of this epoch (from claim) is still live",
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
    leaf("show", "one decision: the analysis, its state, each action's verdict, its lease")
    versioned(leaf("claim", "put a decision under review by you; prints your lease"))
    renew = leaf("renew", "extend your live lease of a decision")
    renew.add_argument(
        "--lease-epoch", type=int, help="the epoch claim printed (default: the decision's latest)"
    )
    fenced(leaf("release", "give a claimed decision back to the queue"))
    reassign = leaf("reassign", "hand a decision to another analyst, on a new lease")
    reassign.add_argument("--to", required=True, metavar="USERNAME", help="who takes it over")
    versioned(reassign)
    approve = leaf("approve", "approve decisions with the actions to carry out", many=True)
    approve.add_argument(
        "--action", action="append", default=[], type=_action, metavar="TYPE:TARGET",
        help="an action to carry out (repeatable); TYPE is one of "
        + ", ".join(render.values(ACTION)),
    )  # fmt: skip
    approve.add_argument(
        "--recommended", action="store_true", help="approve every recommended action as it is"
    )
    approve.add_argument("--note", default="", help="why")
    approve.add_argument(
        "--otp", default="", metavar="CODE", help="a fresh TOTP code, for step-up (else asked)"
    )
    fenced(approve)
    reject = leaf("reject", "reject decisions: nothing is carried out", many=True)
    reject.add_argument("--note", default="", help="why")
    fenced(reject)
    escalate = leaf("escalate", "hand a decision up to an admin")
    escalate.add_argument("--reason", required=True, help="why it needs an admin")
    fenced(escalate)
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


def _verdict_cells(d: decision_pb2.Decision, v: decision_pb2.ActionVerdict) -> list[str]:
    """`ACTIVATE_KILLSWITCH segment-9`, `pending`, `1/2 approved by ana`."""
    index = v.recommended_index
    inside = 0 <= index < len(d.recommended_actions)
    action = d.recommended_actions[index] if inside else v.action
    what = f"{render.short(ACTION, v.type).upper()} {action.target or '-'}"
    if v.status == decision_pb2.ACTION_VERDICT_STATUS_REJECTED:
        tally = f"by {v.rejected_by}" if v.rejected_by else ""
    else:
        tally = f"{len(v.approved_by)}/{v.required_approvals} approved"
        if v.approved_by:
            tally += " by " + ", ".join(v.approved_by)
    return [what, render.short(VERDICT, v.status), tally]


def _verdicts(d: decision_pb2.Decision) -> list[str]:
    """One aligned line per action verdict."""
    rows = [_verdict_cells(d, v) for v in d.action_verdicts]
    if not rows:
        return []
    return render.table(["ACTION", "STATUS", "TALLY"], rows).splitlines()[1:]


def _waiting(d: decision_pb2.Decision) -> str:
    """The actions approved by some but still short of approvers, as one phrase."""
    if d.status in FOLLOW_EXIT:
        return ""
    short = [
        " ".join(c for c in (cells[0], cells[2]) if c)
        for v in d.action_verdicts
        if v.status == decision_pb2.ACTION_VERDICT_STATUS_PENDING and v.approved_by
        for cells in [_verdict_cells(d, v)]
    ]
    return "; ".join(short)


def _lease(d: decision_pb2.Decision, now: datetime) -> str:
    if not d.lease_epoch:
        return "-"
    if not d.claimed_by:
        return f"epoch {d.lease_epoch}, not held"
    expires = d.claim_expires_at
    return (
        f"epoch {d.lease_epoch}, {d.claimed_by} until {render.when(expires)}"
        f" ({render.until(expires, now)})"
    )


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
        ("lease", _lease(d, now)),
    ]
    lines = _verdicts(d) or ["-"]
    pairs += [("verdicts", lines[0]), *(("", line) for line in lines[1:])]
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
    line = f"{verb} {d.analysis_id}: {render.short(STATUS, d.status)}, version {d.version}"
    waiting = _waiting(d)
    return f"{line}; waiting for another approver: {waiting}" if waiting else line


def _leased(head: str, d: decision_pb2.Decision, lease: decision_pb2.Lease) -> str:
    now = datetime.now(UTC)
    return (
        f"{head}: {render.short(STATUS, d.status)}, version {d.version}; "
        f"lease epoch {lease.epoch} until {render.when(lease.expires_at)}"
        f" ({render.until(lease.expires_at, now)})"
    )


def _follow_line(d: decision_pb2.Decision) -> str:
    who = d.resolution.decided_by or d.claimed_by
    line = f"{render.when(d.updated_at)}  {render.short(STATUS, d.status)}  version {d.version}" + (
        f"  by {who}" if who else ""
    )
    waiting = _waiting(d)
    return f"{line}  {waiting}" if waiting else line


async def _follow(args: argparse.Namespace) -> int:
    async with remote.signed_in(args) as client:
        last: decision_pb2.Decision | None = None
        async for decision in client.watch_decision(args.analysis_id):
            last = decision
            if args.json:
                print(json.dumps(render.to_dict(decision), ensure_ascii=False), flush=True)
                continue
            print(_follow_line(decision), flush=True)
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
        if command in ("approve", "reject"):
            if len(args.analysis_ids) > 1:
                return await _bulk(client, command, args)
            args.analysis_id = args.analysis_ids[0]
        if command in ("claim", "renew", "reassign"):
            return await _lease_change(client, command, args)
        decision = await _change(client, command, args)
        if args.json:
            print(render.dumps(decision))
        elif command == "show":
            print(_show(decision))
        else:
            print(_done(_VERBS[command], decision))
        return remote.EXIT_OK


_VERBS: Final = {
    "release": "released",
    "approve": "approved",
    "reject": "rejected",
    "escalate": "escalated",
}


async def _lease_change(client: HitlClient, command: str, args: argparse.Namespace) -> int:
    analysis_id = args.analysis_id
    if command == "claim":
        reply: Any = await client.claim_lease(analysis_id, expected_version=args.expected_version)
        line = _leased(f"claimed {analysis_id}", reply.decision, reply.lease)
    elif command == "renew":
        epoch = args.lease_epoch
        if epoch is None:
            epoch = (await client.get_decision(analysis_id)).lease_epoch
        reply = await client.renew_lease(analysis_id, epoch)
        line = _leased(f"renewed {analysis_id}", reply.decision, reply.lease)
    else:
        reply = await client.reassign_decision(
            analysis_id, args.to, expected_version=args.expected_version
        )
        head = f"reassigned {analysis_id} to {reply.decision.claimed_by}"
        line = _leased(head, reply.decision, reply.lease)
    print(render.dumps(reply) if args.json else line)
    return remote.EXIT_OK


async def _stepped_up(args: argparse.Namespace, call: Callable[[str], Awaitable[T]]) -> T:
    """An approval, with the step-up code given, else asked for once the server wants one."""
    if args.otp:
        return await call(args.otp.strip())
    try:
        return await call("")
    except HitlClientError as exc:
        if exc.code is not grpc.StatusCode.PERMISSION_DENIED or STEP_UP_MISSING not in exc.message:
            raise
    code = await asyncio.to_thread(remote.ask_secret, STEP_UP_PROMPT)
    return await call(code.strip())


async def _actions_of(
    client: HitlClient, analysis_id: str, args: argparse.Namespace
) -> list[decision_pb2.Action]:
    actions = list(args.action)
    if args.recommended:
        actions += list((await client.get_decision(analysis_id)).recommended_actions)
    return actions


async def _bulk(client: HitlClient, command: str, args: argparse.Namespace) -> int:
    """One MakeDecisions call: a line per item; exit 0 only if every item succeeded."""
    if args.expected_version is not None or args.lease_epoch is not None:
        raise remote.CliError(
            "--expected-version and --lease-epoch name one decision's: give one ID",
            remote.EXIT_USAGE,
        )
    items = []
    for analysis_id in args.analysis_ids:
        item = decision_pb2.MakeDecisionsItem(analysis_id=analysis_id)
        if command == "approve":
            try:
                item.approved_actions.extend(await _actions_of(client, analysis_id, args))
            except HitlClientError as exc:
                if exc.code is not grpc.StatusCode.NOT_FOUND:
                    raise  # an unknown one is reported in its own result
        items.append(item)
    if command == "approve":
        results = await _stepped_up(
            args,
            lambda otp: client.make_decisions(
                items, decision_pb2.DECISION_STATUS_APPROVED, notes=args.note, otp=otp
            ),
        )
    else:
        results = await client.make_decisions(
            items, decision_pb2.DECISION_STATUS_REJECTED, notes=args.note
        )
    if args.json:
        print(render.dumps(results))
    failed = 0
    for result in results:
        if result.code:
            failed += 1
            code = STATUS_CODES.get(result.code, grpc.StatusCode.UNKNOWN)
            why = remote.describe(HitlClientError(code, result.message))
            if not args.json:
                print(render.plain(f"{result.analysis_id}: {why}"))
        elif not args.json:
            print(_done(_VERBS[command], result.decision))
    if not failed:
        return remote.EXIT_OK
    sys.stdout.flush()
    print(f"{PROG}: {failed} of {len(results)} refused", file=sys.stderr)
    return remote.EXIT_REFUSED


async def _change(
    client: HitlClient, command: str, args: argparse.Namespace
) -> decision_pb2.Decision:
    analysis_id = args.analysis_id
    if command == "show":
        return await client.get_decision(analysis_id)
    version, epoch = args.expected_version, args.lease_epoch
    if command == "release":
        return await client.release_decision(
            analysis_id, expected_version=version, lease_epoch=epoch
        )
    if command == "approve":
        actions = await _actions_of(client, analysis_id, args)
        return await _stepped_up(
            args,
            lambda otp: client.approve(
                analysis_id,
                actions,
                notes=args.note,
                expected_version=version,
                lease_epoch=epoch,
                otp=otp,
            ),
        )
    if command == "reject":
        return await client.reject(
            analysis_id, notes=args.note, expected_version=version, lease_epoch=epoch
        )
    return await client.escalate_decision(
        analysis_id, args.reason, expected_version=version, lease_epoch=epoch
    )


def run(args: argparse.Namespace) -> int:
    """Runs one `decisions` subcommand; its exit status."""
    return remote.run(PROG, lambda: _run(args))
