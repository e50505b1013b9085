"""The shell commands' parts: the session file, the server they reach, how they print."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import grpc
import pytest
from google.rpc.error_details_pb2 import BadRequest
from hitl.v1 import audit_pb2, auth_pb2, decision_pb2

from hitl_grpc.cli import decisions, remote, render, session
from hitl_grpc.cli.main import main
from hitl_grpc.client import HitlClientError

PAIR = auth_pb2.TokenPair(access_token="a" * 40, refresh_token="r" * 40)


def _session(address: str = "127.0.0.1:50051") -> session.Session:
    return session.Session(session.Connection(address), "ana", PAIR)


def test_the_file_is_private_even_in_a_loose_directory(tmp_path: Path) -> None:
    file = session.path({"XDG_CONFIG_HOME": str(tmp_path)})
    file.parent.mkdir(mode=0o755)
    old = os.umask(0o022)
    try:
        session.save(file, _session())
    finally:
        os.umask(old)
    assert file == tmp_path / "hitl-grpc" / "session.json"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert stat.S_IMODE(file.parent.stat().st_mode) == 0o700
    assert session.load(file) == _session()
    assert [p.name for p in file.parent.iterdir()] == ["session.json"]  # no scratch left


def test_the_config_directory_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert session.directory({}) == tmp_path / ".config" / "hitl-grpc"
    # The spec: a relative XDG_CONFIG_HOME is invalid and ignored.
    assert session.directory({"XDG_CONFIG_HOME": "rel"}) == tmp_path / ".config" / "hitl-grpc"


def test_a_damaged_file_is_named_not_a_traceback(tmp_path: Path) -> None:
    file = tmp_path / "session.json"
    assert session.load(file) is None
    file.write_text('{"connection": {"address": 1}')
    with pytest.raises(session.SessionFileError, match="not a session file"):
        session.load(file)
    assert session.remove(file) and not session.remove(file)


def _args(**given: object) -> argparse.Namespace:
    base: dict[str, object] = {"address": None, "tls": None, "ca_file": None, "server_name": None}
    return argparse.Namespace(**{**base, **given})


def test_the_server_is_the_options_then_the_environment_then_the_session() -> None:
    tls = session.Session(
        session.Connection("hitl.example:443", True, "/etc/ca.pem", "hitl"), "ana", PAIR
    )
    assert remote.connection(_args(), None, {}) == session.Connection(remote.DEFAULT_ADDRESS)
    assert remote.connection(_args(), None, {"HITL_LISTEN": "0.0.0.0:7"}).address == "0.0.0.0:7"
    assert remote.connection(_args(), tls, {}) == tls.connection
    assert remote.connection(_args(), tls, {"HITL_ADDRESS": "hitl.example:443"}) == tls.connection
    other = remote.connection(_args(address="other:50051"), tls, {})
    assert other == session.Connection("other:50051")
    forced = remote.connection(_args(server_name="alt"), tls, {})
    assert (forced.tls, forced.server_name, forced.ca_file) == (True, "alt", "")


def test_a_failed_call_is_one_line_with_its_fields() -> None:
    bad = BadRequest(
        field_violations=[BadRequest.FieldViolation(field="notes", description="too long")]
    )
    error = HitlClientError(grpc.StatusCode.INVALID_ARGUMENT, "invalid request", details=[bad])
    assert remote.describe(error) == "invalid argument: invalid request (notes: too long)"
    gone = HitlClientError(grpc.StatusCode.NOT_FOUND, "no decision 'x'")
    assert remote.describe(gone) == "not found: no decision 'x'"
    assert remote.EXIT_OF[grpc.StatusCode.NOT_FOUND] == remote.EXIT_NOT_FOUND


def test_enums_print_short_and_parse_both_ways() -> None:
    priority = decision_pb2.Priority.DESCRIPTOR
    status = decision_pb2.DecisionStatus.DESCRIPTOR
    outcome = audit_pb2.AuditOutcome.DESCRIPTOR
    assert render.short(priority, decision_pb2.PRIORITY_CRITICAL) == "critical"
    assert render.short(status, decision_pb2.DECISION_STATUS_IN_REVIEW) == "in_review"
    assert render.short(outcome, audit_pb2.AUDIT_OUTCOME_DENIED) == "denied"
    assert render.values(priority) == ["critical", "high", "medium", "low"]
    assert render.parse(status, "ESCALATED") == decision_pb2.DECISION_STATUS_ESCALATED
    assert render.parse(status, "decision_status_pending") == decision_pb2.DECISION_STATUS_PENDING
    with pytest.raises(ValueError, match="not one of"):
        render.parse(priority, "urgent")


def test_server_text_cannot_drive_the_terminal() -> None:
    hostile = "APT\x1b[2J\x1b]0;owned\x07\u202eevil\r"
    shown = render.plain(hostile)
    assert "\x1b" not in shown and "\u202e" not in shown and "\r" not in shown
    assert shown.startswith("APT\\x1b[2J")
    table = render.table(["ID", "ACTOR"], [["a", hostile], ["b", False], ["c", 0]])
    lines = table.splitlines()
    assert lines[0] == "ID  ACTOR" and lines[2] == "b   False" and lines[3] == "c   0"


def test_json_keeps_zeros_and_false() -> None:
    stats = decision_pb2.GetDecisionStatsResponse()
    body = render.to_dict(stats)
    assert body["pending"] == "0" and body["pending_by_priority"] == []
    user = render.to_dict(auth_pb2.User(username="x"))
    assert user["active"] is False and user["mfa_enabled"] is False


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("hitl-grpc ")
    with pytest.raises(SystemExit) as done:
        main(["decisions", "approve", "x", "--action", "block_ip"])
    assert done.value.code == remote.EXIT_USAGE
    assert "expected TYPE:TARGET" in capsys.readouterr().err


def test_no_session_and_no_credentials_is_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("HITL_USERNAME", "HITL_PASSWORD", "HITL_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert main(["decisions", "list"]) == remote.EXIT_UNAUTHENTICATED
    err = capsys.readouterr().err
    assert err == (
        "hitl-grpc decisions: not signed in: run hitl-grpc login "
        "(or set HITL_USERNAME and HITL_PASSWORD)\n"
    )
    (tmp_path / "hitl-grpc").mkdir()
    (tmp_path / "hitl-grpc" / "session.json").write_text("garbage")
    assert main(["whoami"]) == remote.EXIT_USAGE
    assert "is not a session file" in capsys.readouterr().err


def _two_person(approved_by: list[str]) -> decision_pb2.Decision:
    block = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
    kill = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="seg-9")
    pending = decision_pb2.ACTION_VERDICT_STATUS_PENDING
    return decision_pb2.Decision(
        analysis_id="an-1",
        status=decision_pb2.DECISION_STATUS_PENDING,
        version=4,
        lease_epoch=1,
        recommended_actions=[block, kill],
        action_verdicts=[
            decision_pb2.ActionVerdict(
                recommended_index=0,
                type=block.type,
                status=decision_pb2.ACTION_VERDICT_STATUS_APPROVED,
                required_approvals=1,
                approved_by=approved_by[:1],
            ),
            decision_pb2.ActionVerdict(
                recommended_index=1,
                type=kill.type,
                status=pending,
                required_approvals=2,
                approved_by=approved_by,
            ),
            decision_pb2.ActionVerdict(
                recommended_index=-1,
                type=decision_pb2.ACTION_TYPE_CUSTOM,
                action=decision_pb2.Action(type=decision_pb2.ACTION_TYPE_CUSTOM, target="x"),
                status=decision_pb2.ACTION_VERDICT_STATUS_REJECTED,
                required_approvals=1,
                rejected_by="bob",
            ),
        ],
    )


def test_each_action_verdict_is_a_line_with_its_tally() -> None:
    shown = decisions._show(_two_person(["ana"])).splitlines()
    start = next(i for i, line in enumerate(shown) if line.startswith("verdicts:"))
    assert shown[start:] == [
        "verdicts:      BLOCK_IP 203.0.113.7       approved  1/1 approved by ana",
        "               ACTIVATE_KILLSWITCH seg-9  pending   1/2 approved by ana",
        "               CUSTOM x                   rejected  by bob",
    ]
    assert "lease:         epoch 1, not held" in shown


def test_a_partial_approval_says_who_is_still_awaited() -> None:
    partial = _two_person(["ana"])
    assert decisions._done("approved", partial) == (
        "approved an-1: pending, version 4; "
        "waiting for another approver: ACTIVATE_KILLSWITCH seg-9 1/2 approved by ana"
    )
    assert decisions._follow_line(partial).endswith(
        "pending  version 4  ACTIVATE_KILLSWITCH seg-9 1/2 approved by ana"
    )
    untouched = _two_person([])
    assert decisions._done("approved", untouched) == "approved an-1: pending, version 4"
    closed = _two_person(["ana", "bob"])
    closed.status = decision_pb2.DECISION_STATUS_APPROVED
    assert "waiting" not in decisions._done("approved", closed)


def test_bulk_result_codes_are_grpc_status_codes() -> None:
    assert decisions.STATUS_CODES[9] is grpc.StatusCode.FAILED_PRECONDITION
    assert decisions.STATUS_CODES[5] is grpc.StatusCode.NOT_FOUND
    assert decisions.STATUS_CODES[0] is grpc.StatusCode.OK


def test_set_certificate_wants_a_subject_or_clear(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["users", "set-certificate", "candi"])
    assert done.value.code == remote.EXIT_USAGE
    assert "one of the arguments DN --clear is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main(["users", "set-certificate", "candi", "CN=x", "--clear"])
    assert done.value.code == remote.EXIT_USAGE
