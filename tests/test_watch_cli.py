"""`hitl-grpc watch`: the queue view folds the change stream into a table."""

from __future__ import annotations

import io

from google.protobuf.timestamp_pb2 import Timestamp
from hitl.v1 import decision_pb2
from rich.console import Console

from hitl_grpc.cli.main import _parser
from hitl_grpc.cli.watch import QueueView
from hitl_grpc.client import PendingChange


def _decision(analysis_id: str, priority: decision_pb2.Priority.ValueType) -> decision_pb2.Decision:
    created = Timestamp()
    created.GetCurrentTime()
    return decision_pb2.Decision(
        analysis_id=analysis_id,
        priority=priority,
        status=decision_pb2.DECISION_STATUS_PENDING,
        created_at=created,
        attributed_actor="APT-Example",
    )


def _text(view: QueueView) -> str:
    out = io.StringIO()
    Console(file=out, width=140, color_system=None).print(view.render())
    return out.getvalue()


def test_view_follows_adds_updates_removals_and_resyncs() -> None:
    view = QueueView()
    view.apply(PendingChange("added", "c1", _decision("low-one", decision_pb2.PRIORITY_LOW)))
    view.apply(PendingChange("added", "c2", _decision("urgent", decision_pb2.PRIORITY_CRITICAL)))
    view.apply(PendingChange("snapshot_complete", "c3"))
    text = _text(view)
    assert "live" in text
    assert text.index("urgent") < text.index("low-one")

    claimed = _decision("low-one", decision_pb2.PRIORITY_LOW)
    claimed.claimed_by = "ana"
    view.apply(PendingChange("updated", "c4", claimed))
    assert "ana" in _text(view)

    view.apply(
        PendingChange(
            "removed",
            "c5",
            analysis_id="urgent",
            final_status=decision_pb2.DECISION_STATUS_APPROVED,
        )
    )
    text = _text(view)
    assert "urgent left the queue (DECISION_STATUS_APPROVED)" in text
    assert set(view.items) == {"low-one"}

    view.apply(PendingChange("resync", ""))
    assert view.items == {}
    assert "loading snapshot" in _text(view)


def test_watch_subcommand_takes_address_and_priorities() -> None:
    args = _parser().parse_args(
        ["watch", "--address", "hitl:50051", "--priority", "critical", "--priority", "high"]
    )
    assert args.command == "watch"
    assert args.address == "hitl:50051"
    assert args.priority == ["critical", "high"]
