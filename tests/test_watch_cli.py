"""`hitl-grpc watch`: the queue view, the connection state, and decision text made safe."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from hitl.v1 import decision_pb2
from rich.cells import cell_len

from hitl_grpc.cli.main import _parser
from hitl_grpc.cli.watch.feed import describe
from hitl_grpc.cli.watch.queue import Phase, QueueView
from hitl_grpc.cli.watch.screen import (
    COLUMNS,
    column_widths,
    detail,
    high_impact,
    row,
    verdict_words,
)
from hitl_grpc.cli.watch.text import countdown, cut, shown, span
from hitl_grpc.client import HitlClientError, PendingChange


def _decision(
    analysis_id: str,
    priority: decision_pb2.Priority.ValueType = decision_pb2.PRIORITY_HIGH,
    *,
    version: int = 1,
    **fields: object,
) -> decision_pb2.Decision:
    created = Timestamp()
    created.GetCurrentTime()
    values: dict[str, object] = {"status": decision_pb2.DECISION_STATUS_PENDING, **fields}
    return decision_pb2.Decision(
        analysis_id=analysis_id,
        priority=priority,
        created_at=created,
        version=version,
        **values,  # type: ignore[arg-type]
    )


def _live_view(*decisions: decision_pb2.Decision) -> QueueView:
    view = QueueView()
    view.connecting()
    for d in decisions:
        view.apply(PendingChange("added", "", d))
    view.apply(PendingChange("snapshot_complete", "c0"))
    return view


def test_the_snapshot_is_shown_only_once_complete_and_most_urgent_first() -> None:
    view = QueueView()
    assert view.connection.line("x") == "connecting to x"
    view.connecting()
    view.apply(PendingChange("added", "", _decision("low-one", decision_pb2.PRIORITY_LOW)))
    assert view.connection.phase is Phase.LOADING
    assert view.items == {}  # half a snapshot is never shown
    view.apply(PendingChange("added", "", _decision("urgent", decision_pb2.PRIORITY_CRITICAL)))
    view.apply(PendingChange("snapshot_complete", "c1"))
    assert view.live
    assert [d.analysis_id for d in view.ordered()] == ["urgent", "low-one"]


def test_live_changes_add_update_and_remove() -> None:
    view = _live_view(_decision("a"), _decision("b"))
    claimed = _decision("a", version=2, claimed_by="ana")
    view.apply(PendingChange("updated", "c2", claimed))
    assert view.items["a"].claimed_by == "ana"
    view.apply(
        PendingChange(
            "removed", "c3", analysis_id="b", final_status=decision_pb2.DECISION_STATUS_APPROVED
        )
    )
    assert set(view.items) == {"a"}
    assert view.last_change == "b left the queue (APPROVED)"


def test_a_lost_stream_keeps_the_last_queue_marked_out_of_date() -> None:
    view = _live_view(_decision("a"))
    broke = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    view.interrupted("connection refused", now=broke)
    view.interrupted("connection refused", now=broke + timedelta(seconds=30))
    c = view.connection
    assert c.phase is Phase.RECONNECTING
    assert c.stale_since == broke  # from the moment it broke, not from the last retry
    assert set(view.items) == {"a"}
    line = c.line("hitl:50051")
    assert line.startswith("reconnecting: connection refused · out of date since ")
    assert broke.astimezone().strftime("%H:%M:%S") in line

    # The next snapshot replaces the old queue whole: what closed meanwhile is gone.
    view.connecting()
    view.apply(PendingChange("added", "", _decision("b")))
    assert set(view.items) == {"a"}
    assert "out of date" in view.connection.line("x")
    view.apply(PendingChange("snapshot_complete", "c9"))
    assert set(view.items) == {"b"}
    assert view.connection.line("x") == "live"


def test_never_connected_says_so() -> None:
    view = QueueView()
    assert view.connection.line("hitl:50051") == "connecting to hitl:50051"
    view.interrupted("cannot resolve hitl")
    assert view.connection.line("hitl:50051") == "reconnecting: cannot resolve hitl · no data yet"


def test_a_resync_starts_a_new_snapshot() -> None:
    view = _live_view(_decision("a"))
    view.apply(PendingChange("resync", ""))
    assert view.connection.phase is Phase.LOADING
    view.apply(PendingChange("snapshot_complete", "c1"))
    assert view.items == {}


def test_our_own_newer_reply_is_not_undone_by_an_older_event() -> None:
    view = _live_view(_decision("a", version=1))
    view.merge(_decision("a", version=2, claimed_by="ana"))
    assert view.items["a"].claimed_by == "ana"
    view.apply(PendingChange("updated", "c1", _decision("a", version=1)))
    assert view.items["a"].version == 2
    approved = _decision("a", version=3, status=decision_pb2.DECISION_STATUS_APPROVED)
    view.merge(approved)
    assert "a" not in view.items


def test_control_and_format_characters_are_spelled_out() -> None:
    assert shown("\x1b[2J\x07\r\u202e\u200b\x9b") == "\\x1b[2J\\x07\\x0d\\u202e\\u200b\\x9b"
    assert shown("[/] [bold]x[/bold]") == "[/] [bold]x[/bold]"
    assert shown("a\nb\tc") == "a\\x0ab\\x09c"
    assert shown("a\nb", multiline=True) == "a\nb"
    assert shown("naïve 日本 🛡") == "naïve 日本 🛡"


def test_long_text_is_cut_to_its_cells_with_an_ellipsis() -> None:
    assert cut("APT-Example", 20) == "APT-Example"
    assert cut("A" * 30, 10) == "A" * 9 + "…"
    wide = cut("日本語のとても長い名前", 9)
    assert wide.endswith("…")
    assert cell_len(wide) <= 9
    assert cut("\x1b[31mred", 8) == "\\x1b[31…"


def test_durations_read_as_countdowns() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert span(timedelta(seconds=45)) == "45s"
    assert span(timedelta(minutes=12, seconds=5)) == "12m05s"
    assert span(timedelta(hours=3, minutes=4)) == "3h04m"
    assert span(timedelta(days=2, hours=3)) == "2d03h"
    assert countdown(now + timedelta(minutes=14, seconds=59), now) == "14m59s"
    assert countdown(now - timedelta(seconds=90), now) == "over 1m30s"
    assert countdown(None, now) == "-"


def test_a_row_shows_sla_age_and_claimer_within_its_columns() -> None:
    now = datetime.now(UTC)
    deadline = Timestamp()
    deadline.FromDatetime(now + timedelta(minutes=10, seconds=30))
    d = _decision(
        "an-1",
        decision_pb2.PRIORITY_CRITICAL,
        sla_deadline=deadline,
        claimed_by="a-very-long-username-indeed",
        attributed_actor="[/]" + "x" * 100,
    )
    cells = [c.plain for c in row(d, now)]
    assert cells[0] == "CRITICAL"
    assert cells[3] in ("10m30s", "10m29s")
    assert cells[5].endswith("…")
    assert cells[6].startswith("[/]xx")
    assert cells[6].endswith("…")


def test_every_column_fits_an_80_column_terminal() -> None:
    wide = column_widths(160)
    assert wide["analysis"] == 36  # a whole generated id
    assert wide["actor"] > 36
    narrow = column_widths(80)
    assert sum(narrow.values()) + 2 * len(COLUMNS) + 1 <= 80
    assert narrow["analysis"] >= 10
    assert narrow["actor"] >= 8


def test_high_impact_means_killswitch_countermeasure_or_critical() -> None:
    block = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP)
    kill = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH)
    counter = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_DEPLOY_COUNTERMEASURE)
    high = _decision("h", decision_pb2.PRIORITY_HIGH)
    assert not high_impact(high, [block])
    assert high_impact(high, [block, kill])
    assert high_impact(high, [counter])
    assert high_impact(_decision("c", decision_pb2.PRIORITY_CRITICAL))


def test_transport_failures_are_named_in_plain_words() -> None:
    def named(code: grpc.StatusCode, message: str) -> str:
        return describe(HitlClientError(code, message))

    unavailable = grpc.StatusCode.UNAVAILABLE
    refused = (
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
        "Failed to connect to remote host: Connection refused"
    )
    assert named(unavailable, refused) == "connection refused"
    dns = (
        "errors resolving nosuchhost.invalid:50051: [field:hostname lookup error:address "
        "lookup failed for nosuchhost.invalid:50051: Domain name not found]"
    )
    assert named(unavailable, dns) == "cannot resolve nosuchhost.invalid"
    assert named(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") == "timed out"
    assert named(unavailable, "") == "server unavailable"
    denied = named(grpc.StatusCode.PERMISSION_DENIED, "account is deactivated")
    assert denied == "permission denied: account is deactivated"
    assert len(named(grpc.StatusCode.INTERNAL, "x" * 500)) <= 120
    assert named(grpc.StatusCode.NOT_FOUND, "no \x1b[2Jid") == "not found: no \\x1b[2Jid"
    # A refusal that says what to do is kept whole.
    reason = "approving ACTION_TYPE_ACTIVATE_KILLSWITCH needs step-up MFA " + "x" * 200
    whole = describe(HitlClientError(grpc.StatusCode.FAILED_PRECONDITION, reason), whole=True)
    assert whole == f"failed precondition: {reason}"


def test_each_action_shows_its_verdict_and_approvals_so_far() -> None:
    kill = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="seg-9")
    block = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
    custom = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_CUSTOM, target="t", description="d")
    pending, approved, rejected = (
        decision_pb2.ACTION_VERDICT_STATUS_PENDING,
        decision_pb2.ACTION_VERDICT_STATUS_APPROVED,
        decision_pb2.ACTION_VERDICT_STATUS_REJECTED,
    )
    verdicts = [
        decision_pb2.ActionVerdict(
            recommended_index=0, status=pending, required_approvals=2, approved_by=["ana"]
        ),
        decision_pb2.ActionVerdict(recommended_index=1, status=rejected, rejected_by="bob"),
        decision_pb2.ActionVerdict(
            recommended_index=-1, action=custom, status=approved, required_approvals=1,
            approved_by=["ana\x1b[2J"],
        ),
    ]  # fmt: skip
    decision = _decision("d", recommended_actions=[kill, block], action_verdicts=verdicts)
    assert verdict_words(verdicts[0]) == "PENDING · 1/2 approved by ana"
    assert verdict_words(verdicts[1]) == "REJECTED by bob"
    assert verdict_words(verdicts[2]) == "APPROVED · 1/1 approved by ana\\x1b[2J"
    assert verdict_words(decision_pb2.ActionVerdict(status=pending, required_approvals=2)) == (
        "PENDING · 0/2 approved"
    )
    lines = detail(decision, datetime.now(UTC)).plain.split("\n")
    assert "1. ACTIVATE_KILLSWITCH seg-9  [PENDING · 1/2 approved by ana]" in lines[-5]
    assert "2. BLOCK_IP 203.0.113.7  [REJECTED by bob]" in lines[-4]
    assert lines[-3].startswith("added")
    assert "CUSTOM t — d  [APPROVED · 1/1 approved by ana\\x1b[2J]" in lines[-3]
    # Before its first verdict a decision has none: the actions are listed bare.
    bare = detail(_decision("b", recommended_actions=[kill]), datetime.now(UTC)).plain
    assert "1. ACTIVATE_KILLSWITCH seg-9\n" in bare


def test_watch_subcommand_takes_address_and_priorities() -> None:
    args = _parser().parse_args(
        ["watch", "--address", "hitl:50051", "--priority", "critical", "--priority", "high"]
    )
    assert args.command == "watch"
    assert args.address == "hitl:50051"
    assert args.priority == ["critical", "high"]
