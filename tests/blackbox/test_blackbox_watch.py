"""`hitl-grpc watch` in a real terminal (tmux) against `hitl-grpc serve` child processes.

The screen is typed at with send-keys and read with capture-pane; what it did is checked
over the API from this process.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pyotp
import pytest
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import CALL_S, Served
from tests.blackbox.terminal import Terminal
from tests.harness import Metadata, bearer

WATCH: Final = (sys.executable, "-m", "hitl_grpc.cli", "watch")
# A reconnect is a backoff of at most a few seconds plus grpc's own reconnect delay.
RECONNECT_S: Final = 20.0
APPROVE_HINT: Final = "Enter: on to the note"
STEP_UP_PROMPT: Final = "needs a fresh TOTP code"


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    """A tmux pane of its own, ended after the test."""
    term = Terminal(tmp_path)
    try:
        yield term
    finally:
        term.close()


def _watch(terminal: Terminal, address: str, username: str, password: str) -> Terminal:
    return terminal.start(
        [*WATCH, "--address", address],
        {
            "PYTHONFAULTHANDLER": "1",
            "HITL_USERNAME": username,
            "HITL_PASSWORD": password,
            "TERM": "xterm-256color",
        },
    )


def _status(screen: str) -> str:
    return screen.split("\n", 1)[0]


def _top(screen: str) -> str:
    """The status line, however many rows it wraps onto (all above the table's header)."""
    # Joined into one line: a long refusal wraps onto the next rows at any space.
    return " ".join(screen[: screen.find("claimed by")].rsplit("\n", 1)[0].split())


def _live(screen: str) -> bool:
    return _status(screen).lstrip().startswith("live")


def _row(screen: str, analysis_id: str) -> str:
    """The queue row of that decision ("" if it is not in the table)."""
    header = screen.find("claimed by")
    rule = screen.find("────", header)
    table = screen[header:rule]
    return next((line for line in table.split("\n") if analysis_id in line), "")


def _get(served: Served, metadata: Metadata, analysis_id: str) -> decision_pb2.Decision:
    with served.channel() as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        request = decision_pb2.GetDecisionRequest(analysis_id=analysis_id)
        return stub.GetDecision(request, metadata=metadata, timeout=CALL_S).decision


def _quit(terminal: Terminal) -> None:
    terminal.send("q")
    assert terminal.wait_for_exit() == "exit=0"
    assert "Traceback" not in terminal.screen()


def test_a_decision_submitted_elsewhere_appears_and_its_age_ticks(
    served: Served, terminal: Terminal
) -> None:
    analyst, password = served.create_user(access_pb2.ROLE_ANALYST)
    _watch(terminal, served.address, analyst, password)
    terminal.wait_for(_live, "the live state")

    submitted = served.submit(served.admin(), priority=decision_pb2.PRIORITY_CRITICAL)
    screen = terminal.wait_for(lambda s: bool(_row(s, submitted.analysis_id)), "the new row")
    row = _row(screen, submitted.analysis_id)
    assert "CRITICAL" in row
    assert "PENDING" in row
    assert "1 open" in _status(screen)

    # With no event at all, the age moves on by itself.
    def age(text: str) -> str:
        found = re.search(r"PENDING\s+\S+\s+(\d+s)", _row(text, submitted.analysis_id))
        return found.group(1) if found else ""

    first = age(screen)
    assert first
    terminal.wait_for(lambda s: age(s) not in ("", first), "the age ticking", timeout_s=5)

    # A claim by someone else shows up live with who holds it.
    other, other_password = served.create_user(access_pb2.ROLE_ANALYST)
    with served.channel() as channel:
        decision_pb2_grpc.DecisionServiceStub(channel).ClaimDecision(
            decision_pb2.ClaimDecisionRequest(analysis_id=submitted.analysis_id),
            metadata=bearer(served.login(other, other_password)),
            timeout=CALL_S,
        )
    terminal.wait_for(
        lambda s: "IN_REVIEW" in _row(s, submitted.analysis_id) and other in s,
        "the claim by another analyst",
    )
    _quit(terminal)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_claim_and_approve_from_the_screen(served: Served, terminal: Terminal) -> None:
    analyst, password = served.create_user(access_pb2.ROLE_ANALYST)
    block = decision_pb2.Action(
        type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7", description="block"
    )
    quarantine = decision_pb2.Action(
        type=decision_pb2.ACTION_TYPE_QUARANTINE_SYSTEM, target="host-7"
    )
    item = served.submit(served.admin(), recommended_actions=[block, quarantine])
    _watch(terminal, served.address, analyst, password)
    terminal.wait_for(lambda s: _live(s) and bool(_row(s, item.analysis_id)), "the item, live")

    terminal.send("c")
    terminal.wait_for(lambda s: "IN_REVIEW" in _row(s, item.analysis_id), "the claim")
    claimed = _get(served, served.admin(), item.analysis_id)
    assert claimed.status == decision_pb2.DECISION_STATUS_IN_REVIEW
    assert claimed.claimed_by == analyst

    terminal.send("a")
    terminal.wait_for(APPROVE_HINT, "the approve dialog")
    terminal.send("Down", "Space")  # the second action only
    terminal.wait_for("chosen: QUARANTINE_SYSTEM host-7", "the ticked action")
    terminal.send("Enter")
    terminal.wait_for(f"Approve {item.analysis_id} with: QUARANTINE_SYSTEM host-7", "the note")
    terminal.type("seen on [b]host-7[/b]")
    terminal.wait_for("seen on [b]host-7[/b]", "the note as typed")
    terminal.send("Enter")
    terminal.wait_for(lambda s: not _row(s, item.analysis_id), "the item leaving the queue")
    verdict = _get(served, served.admin(), item.analysis_id)
    assert verdict.status == decision_pb2.DECISION_STATUS_APPROVED
    assert list(verdict.resolution.approved_actions) == [quarantine]
    assert verdict.resolution.notes == "seen on [b]host-7[/b]"
    assert verdict.resolution.decided_by == analyst
    _quit(terminal)


def _enrol(served: Served, username: str, password: str) -> auth_pb2.SetupMfaResponse:
    """MFA on for that account, over the API: SetupMfa, then ConfirmMfa with a live code."""
    token = bearer(served.login(username, password))
    with served.channel() as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        setup = auth.SetupMfa(
            auth_pb2.SetupMfaRequest(password=password), metadata=token, timeout=CALL_S
        )
        auth.ConfirmMfa(
            auth_pb2.ConfirmMfaRequest(code=pyotp.TOTP(setup.secret).now()),
            metadata=token,
            timeout=CALL_S,
        )
    return setup


def _sign_in_with_mfa(
    terminal: Terminal, served: Served, username: str, password: str, backup_code: str
) -> None:
    _watch(terminal, served.address, username, password)
    terminal.wait_for("MFA code", "the sign-in code prompt")
    # A backup code signs in: the TOTP step that confirmed enrolment is spent, and the one
    # after it is kept for the step-up.
    terminal.type(backup_code)
    terminal.send("Enter")


def _step_up_code(secret: str) -> str:
    """A TOTP code the server has not seen: the next 30 s step's, which it accepts (±1 step).

    The current step may be spent already (it confirmed enrolment); a step-up code must be
    later than every step the account has used.
    """
    return pyotp.TOTP(secret).at(time.time() + 30)


def _approve_all(terminal: Terminal, analysis_id: str, chosen: str) -> None:
    """a, tick the first action, Enter, an empty note: up to the confirmation."""
    terminal.send("a")
    terminal.wait_for(APPROVE_HINT, "the approve dialog")
    terminal.send("Space")
    terminal.wait_for(f"chosen: {chosen}", "the ticked action")
    terminal.send("Enter")
    terminal.wait_for(f"Approve {analysis_id} with:", "the note")
    terminal.send("Enter")


def _step_up(terminal: Terminal, code: str) -> None:
    """Types the step-up code into its prompt, checks it is masked, and sends it."""
    terminal.wait_for(STEP_UP_PROMPT, "the step-up prompt")
    terminal.type(code)
    screen = terminal.wait_for("•" * len(code), "the code, masked")
    assert code not in screen
    terminal.send("Enter")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_killswitch_on_a_critical_item_asks_before_it_is_sent(
    served: Served, terminal: Terminal, tmp_path: Path
) -> None:
    """The default rules: a confirmation, a step-up code from each of two approvers."""
    ana, ana_password = served.create_user(access_pb2.ROLE_ANALYST)
    bob, bob_password = served.create_user(access_pb2.ROLE_ANALYST)
    ana_mfa = _enrol(served, ana, ana_password)
    bob_mfa = _enrol(served, bob, bob_password)
    killswitch = decision_pb2.Action(
        type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="segment-9"
    )
    item = served.submit(
        served.admin(), priority=decision_pb2.PRIORITY_CRITICAL, recommended_actions=[killswitch]
    )
    on_item = item.analysis_id
    bob_terminal = Terminal(tmp_path)
    try:
        _sign_in_with_mfa(terminal, served, ana, ana_password, ana_mfa.backup_codes[0])
        _sign_in_with_mfa(bob_terminal, served, bob, bob_password, bob_mfa.backup_codes[0])
        for term in (terminal, bob_terminal):
            term.wait_for(lambda s: _live(s) and bool(_row(s, on_item)), "the item, live")

        for answer in ("n", "y"):
            _approve_all(terminal, on_item, "ACTIVATE_KILLSWITCH segment-9")
            screen = terminal.wait_for("y: go ahead", "the confirmation")
            assert "ACTIVATE_KILLSWITCH segment-9" in screen
            terminal.send(answer)
            if answer == "n":
                terminal.wait_for(lambda s: "y: go ahead" not in s, "the dialog closing")
                assert STEP_UP_PROMPT not in terminal.screen()
                current = _get(served, served.admin(), on_item)
                assert current.status == decision_pb2.DECISION_STATUS_PENDING
                assert not current.action_verdicts[0].approved_by
        _step_up(terminal, _step_up_code(ana_mfa.secret))

        # One approval of two: the item stays in the queue, and both screens say so, bob's
        # from the stream alone.
        partial = f"1/2 approved by {ana}"
        screen = terminal.wait_for(partial, "the partial approval")
        assert "PENDING" in _row(screen, on_item)
        assert "needs another approver" in screen
        bob_terminal.wait_for(partial, "the partial approval, streamed")
        current = _get(served, served.admin(), on_item)
        assert current.status == decision_pb2.DECISION_STATUS_PENDING
        assert current.claimed_by == ""
        [verdict] = current.action_verdicts
        assert list(verdict.approved_by) == [ana]
        assert verdict.required_approvals == 2

        _approve_all(bob_terminal, on_item, "ACTIVATE_KILLSWITCH segment-9")
        bob_terminal.wait_for("y: go ahead", "the confirmation")
        bob_terminal.send("y")
        _step_up(bob_terminal, _step_up_code(bob_mfa.secret))
        for term in (bob_terminal, terminal):
            term.wait_for(lambda s: not _row(s, on_item), "the item leaving the queue")
        verdict_read = _get(served, served.admin(), on_item)
        assert verdict_read.status == decision_pb2.DECISION_STATUS_APPROVED
        assert list(verdict_read.resolution.approved_actions) == [killswitch]
        assert verdict_read.resolution.decided_by == bob
        assert list(verdict_read.action_verdicts[0].approved_by) == [ana, bob]
        _quit(bob_terminal)
    finally:
        bob_terminal.close()
    _quit(terminal)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_approving_a_killswitch_without_mfa_shows_the_servers_reason(
    served: Served, terminal: Terminal
) -> None:
    analyst, password = served.create_user(access_pb2.ROLE_ANALYST)
    killswitch = decision_pb2.Action(
        type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="segment-9"
    )
    item = served.submit(served.admin(), recommended_actions=[killswitch])
    _watch(terminal, served.address, analyst, password)
    terminal.wait_for(lambda s: _live(s) and bool(_row(s, item.analysis_id)), "the item, live")

    _approve_all(terminal, item.analysis_id, "ACTIVATE_KILLSWITCH segment-9")
    terminal.wait_for("y: go ahead", "the confirmation")
    terminal.send("y")
    terminal.wait_for(STEP_UP_PROMPT, "the step-up prompt")
    terminal.send("Enter")  # no code to give
    reason = f"{analyst} has no MFA: enrol with SetupMfa and ConfirmMfa first"
    screen = terminal.wait_for(
        lambda s: reason in _top(s), "the server's reason on the status line"
    )
    assert "refused: failed precondition" in _top(screen)
    assert _row(screen, item.analysis_id)
    current = _get(served, served.admin(), item.analysis_id)
    assert current.status == decision_pb2.DECISION_STATUS_PENDING
    assert not current.action_verdicts or not current.action_verdicts[0].approved_by
    _quit(terminal)


def test_the_screen_says_when_the_server_is_gone_and_catches_up_when_it_is_back(
    database_url: str, tmp_path: Path, make_served: ServedFactory, terminal: Terminal
) -> None:
    first = Served.start(database_url, tmp_path)
    try:
        analyst, password = first.create_user(access_pb2.ROLE_ANALYST)
        gone = first.submit(first.admin())
        kept = first.submit(first.admin())
        _watch(terminal, first.address, analyst, password)
        terminal.wait_for(
            lambda s: (
                _live(s) and bool(_row(s, gone.analysis_id)) and bool(_row(s, kept.analysis_id))
            ),
            "both items, live",
        )
    finally:
        first.stop()
    screen = terminal.wait_for(
        lambda s: "reconnecting: connection refused" in _status(s), "the named error", RECONNECT_S
    )
    assert re.search(r"out of date since \d\d:\d\d:\d\d", _status(screen))
    assert _row(screen, gone.analysis_id)  # the last known queue stays on screen

    # While this screen is away, another replica changes the queue.
    other = Served.start(database_url, tmp_path)
    try:
        approved = decision_pb2.MakeDecisionRequest(
            analysis_id=gone.analysis_id, status=decision_pb2.DECISION_STATUS_APPROVED
        )
        with other.channel() as channel:
            decision_pb2_grpc.DecisionServiceStub(channel).MakeDecision(
                approved, metadata=other.admin(), timeout=CALL_S
            )
        added = other.submit(other.admin())
    finally:
        other.stop()
    assert "reconnecting" in _status(terminal.screen())

    back = make_served(HITL_LISTEN=first.address)
    # The status line and the table are drawn in separate frames: wait for the whole
    # caught-up screen, not the first frame that says live.
    screen = terminal.wait_for(
        lambda s: (
            _live(s)
            and not _row(s, gone.analysis_id)
            and bool(_row(s, kept.analysis_id))
            and bool(_row(s, added.analysis_id))
        ),
        "the live state again, caught up",
        RECONNECT_S,
    )
    assert "out of date" not in _status(screen)
    assert "2 open" in _status(screen)
    # And the stream flows again.
    later = back.submit(back.admin())
    terminal.wait_for(lambda s: bool(_row(s, later.analysis_id)), "a change after the return")
    _quit(terminal)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_markup_and_escapes_in_a_decision_show_literally(
    served: Served, terminal: Terminal
) -> None:
    analyst, password = served.create_user(access_pb2.ROLE_ANALYST)
    hostile = served.submit(
        served.admin(),
        priority=decision_pb2.PRIORITY_CRITICAL,
        attributed_actor="[/] [bold red]APT[/bold red] \x1b[2J\x1b[31mRED",
        threat_level="[blink]high",
        forensic_summary="one [/]\x1b]0;pwned\x07 \u202eevil\ntwo [link=http://x]y[/link]\x1b[H",
        iocs=["[/]", "\x1b[1;1H\x1b[2Kgone"],
        recommended_actions=[
            decision_pb2.Action(
                type=decision_pb2.ACTION_TYPE_CUSTOM, target="[/]", description="[bold]do[/]"
            )
        ],
    )
    _watch(terminal, served.address, analyst, password)
    screen = terminal.wait_for(
        lambda s: _live(s) and bool(_row(s, hostile.analysis_id)), "the item, live"
    )
    terminal.wait_for("\\u202eevil", "the detail pane")
    screen = terminal.screen()
    for literal in (
        "[/] [bold red]APT[/bold red] \\x1b[2J\\x1b[31mRED",
        "[blink]high",
        "one [/]\\x1b]0;pwned\\x07 \\u202eevil",
        "two [link=http://x]y[/link]\\x1b[H",
        "[/], \\x1b[1;1H\\x1b[2Kgone",
        "CUSTOM [/] — [bold]do[/]",
    ):
        assert literal in screen, literal
    assert "[/] [bold red]APT" in _row(screen, hostile.analysis_id)
    assert "pwned" not in terminal.title()
    assert _live(screen)
    assert "claimed by" in screen.split("\n")[1]  # the header is still in its place

    # The screen still works: a new item appears, and the approve dialog shows the text too.
    after = served.submit(served.admin(), priority=decision_pb2.PRIORITY_CRITICAL)
    terminal.wait_for(lambda s: bool(_row(s, after.analysis_id)), "a later item")
    terminal.send("a")
    dialog = terminal.wait_for(APPROVE_HINT, "the approve dialog")
    assert "CUSTOM [/] — [bold]do[/]" in dialog
    terminal.send("Escape")
    terminal.wait_for(lambda s: APPROVE_HINT not in s, "the dialog closing")
    _quit(terminal)


def test_a_wrong_address_names_the_error(tmp_path: Path, terminal: Terminal) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    # Closed again: nothing listens there.
    _watch(terminal, address, "ana", "a-long-password-for-nobody")
    screen = terminal.wait_for(
        lambda s: "reconnecting: connection refused" in _status(s), "the named error"
    )
    assert "no data yet" in _status(screen)
    assert "loading" not in screen
    _quit(terminal)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_refused_sign_in_ends_the_screen_with_the_reason(
    served: Served, terminal: Terminal
) -> None:
    _watch(terminal, served.address, "nobody-here", "a-long-password-for-nobody")
    status = terminal.wait_for_exit()
    assert status == "exit=1"
    assert "unauthenticated" in terminal.screen().lower()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_keys_move_without_breaking_the_screen(served: Served, terminal: Terminal) -> None:
    analyst, password = served.create_user(access_pb2.ROLE_ANALYST)
    items = [served.submit(served.admin()) for _ in range(3)]
    _watch(terminal, served.address, analyst, password)
    terminal.wait_for(
        lambda s: _live(s) and all(_row(s, d.analysis_id) for d in items), "the items, live"
    )
    terminal.send("Enter", "Down", "Down", "PageDown", "Up", "PageUp", "End", "Home", "Enter")
    terminal.send("?")
    terminal.wait_for("any key closes this", "the keys")
    terminal.send("Escape")
    screen = terminal.wait_for(lambda s: "any key closes this" not in s, "the keys closing")
    lines = screen.split("\n")
    assert _live(screen)
    assert "claimed by" in lines[1]
    assert all(_row(screen, d.analysis_id) for d in items)
    # The first row is selected after Home: its id heads the detail pane.
    first = lines[2].split()[1]
    assert any(line.strip().startswith(first) for line in lines[3:])
    _quit(terminal)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_mfa_code_is_asked_on_the_screen_and_not_echoed(
    served: Served, terminal: Terminal
) -> None:
    analyst, password = served.create_user(access_pb2.ROLE_ANALYST)
    token = bearer(served.login(analyst, password))
    with served.channel() as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        setup = auth.SetupMfa(
            auth_pb2.SetupMfaRequest(password=password), metadata=token, timeout=CALL_S
        )
        auth.ConfirmMfa(
            auth_pb2.ConfirmMfaRequest(code=pyotp.TOTP(setup.secret).now()),
            metadata=token,
            timeout=CALL_S,
        )
    item = served.submit(served.admin())
    _watch(terminal, served.address, analyst, password)
    terminal.wait_for("MFA code", "the code prompt")
    # A backup code: the TOTP step that confirmed enrolment is spent until the next one.
    code = setup.backup_codes[0]
    terminal.type(code)
    screen = terminal.wait_for("•" * len(code), "the code, masked")
    assert code not in screen
    terminal.send("Enter")
    terminal.wait_for(lambda s: _live(s) and bool(_row(s, item.analysis_id)), "the item, live")
    _quit(terminal)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_screen_carries_on_the_session_login_kept(
    served: Served, terminal: Terminal, tmp_path: Path
) -> None:
    analyst, password = served.create_user(access_pb2.ROLE_ANALYST)
    item = served.submit(served.admin())
    home = tmp_path / "analyst-home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "cfg"),
        "PATH": os.environ.get("PATH", ""),
    }
    login = subprocess.run(
        [*WATCH[:-1], "login", "--address", served.address, "--username", analyst],
        input=password + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=CALL_S * 2,
        check=False,
    )
    assert login.returncode == 0, login.stderr
    # No address, no username, no password: all from the kept session.
    terminal.start(list(WATCH), {**env, "PYTHONFAULTHANDLER": "1", "TERM": "xterm-256color"})
    screen = terminal.wait_for(
        lambda s: _live(s) and bool(_row(s, item.analysis_id)), "the queue, live"
    )
    assert f"{analyst} @ {served.address}" in _status(screen)
    assert "password" not in screen
    _quit(terminal)
