"""The `hitl-grpc` commands over the API, each a child process, against the served process.

Every CLI run gets HOME and XDG_CONFIG_HOME in the test's own directory, no terminal (its
own session, so getpass can't reach one), and its answers to the prompts on stdin.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import grpc
import pyotp
import pytest
from hitl.v1 import access_pb2, auth_pb2, auth_pb2_grpc, decision_pb2

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import ADMIN_PASSWORD, CALL_S, PASSWORD, Served
from tests.children import Lines

CLI: Final = (sys.executable, "-m", "hitl_grpc.cli")
RUN_S: Final = 60.0
PROMPTS: Final = ("password: ", "MFA code: ", "step-up MFA code: ")
STEP_S: Final = 30
BLOCK: Final = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7")
KILL: Final = decision_pb2.Action(
    type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="segment-9"
)


class Shell:
    """A user's shell: their own home and config directory, pointed at one server."""

    def __init__(self, served: Served, home: Path) -> None:
        self.served = served
        self.home = home
        home.mkdir(exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HITL_")}
        self.env.update(
            {
                "HOME": str(home),
                "XDG_CONFIG_HOME": str(home / "cfg"),
                "HITL_ADDRESS": served.address,
            }
        )

    @property
    def session_file(self) -> Path:
        return self.home / "cfg" / "hitl-grpc" / "session.json"

    def run(self, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        """Runs `hitl-grpc <args>` to its end."""
        return subprocess.run(
            [*CLI, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=RUN_S,
            start_new_session=True,
            check=False,
        )

    def ok(self, *args: str, stdin: str = "", **env: str) -> str:
        """Its stdout; the test fails, with stderr, unless it exits 0."""
        done = self.run(*args, stdin=stdin, **env)
        assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
        return done.stdout

    def start(self, *args: str) -> tuple[subprocess.Popen[str], Lines]:
        """Starts `hitl-grpc <args>`; its stdout line by line."""
        proc = subprocess.Popen(
            [*CLI, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        assert proc.stdout is not None
        return proc, Lines(proc.stdout)

    def login(self, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
        """Signs in through the prompts."""
        return self.ok("login", "--username", username, stdin=password + "\n")

    def kept(self) -> dict[str, Any]:
        """The session file as JSON."""
        return dict(json.loads(self.session_file.read_text()))


def _one_line_error(done: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    # The prompts are on stderr too (where a terminal would show them).
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith(PROMPTS)]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _refresh_refused(served: Served, refresh_token: str) -> grpc.StatusCode:
    with served.channel() as channel:
        try:
            auth_pb2_grpc.AuthServiceStub(channel).RefreshToken(
                auth_pb2.RefreshTokenRequest(refresh_token=refresh_token), timeout=CALL_S
            )
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def _finish(proc: subprocess.Popen[str], lines: Lines) -> tuple[int, str, str]:
    """Its exit status, the rest of its stdout (read by `lines`) and its stderr."""
    rest: list[str] = []
    try:
        while (line := lines.after("", RUN_S)) is not None:
            rest.append(line)
        code = proc.wait(RUN_S)
    except (TimeoutError, subprocess.TimeoutExpired):
        proc.kill()
        code = proc.wait()
    assert proc.stderr is not None
    return code, "\n".join(rest), proc.stderr.read()


def test_login_keeps_a_private_session_that_every_command_uses(
    served: Served, tmp_path: Path
) -> None:
    shell = Shell(served, tmp_path / "ana")
    out = shell.login()
    assert f"signed in to {served.address} as admin (admin, active, mfa off)" in out
    assert stat.S_IMODE(shell.session_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(shell.session_file.parent.stat().st_mode) == 0o700
    assert ADMIN_PASSWORD not in shell.session_file.read_text()
    assert shell.ok("whoami").strip() == "admin (admin, active, mfa off)"
    me = json.loads(shell.ok("whoami", "--json"))
    assert (me["username"], me["role"], me["mfa_enabled"]) == ("admin", "ROLE_ADMIN", False)
    served.submit(served.admin())
    [listed] = json.loads(shell.ok("decisions", "list", "--json"))
    assert listed["status"] == "DECISION_STATUS_PENDING"
    # A second shell with no file and no credentials is not signed in.
    other = Shell(served, tmp_path / "bob")
    _one_line_error(other.run("decisions", "list"), 4, "not signed in", "hitl-grpc login")


def test_a_short_lived_access_token_is_renewed_silently_and_the_file_follows(
    make_served: ServedFactory, tmp_path: Path
) -> None:
    # 30 s is within the client's renewal margin: every command rotates the refresh token.
    served = make_served(HITL_ACCESS_TOKEN_TTL_S="30")
    shell = Shell(served, tmp_path / "ana")
    shell.login()
    seen = {shell.kept()["tokens"]["refreshToken"]}
    for _ in range(3):
        assert shell.ok("whoami").startswith("admin ")
        assert stat.S_IMODE(shell.session_file.stat().st_mode) == 0o600
        seen.add(shell.kept()["tokens"]["refreshToken"])
    assert len(seen) == 4, "each command rotated the token and kept the new one"
    # A stale copy of the file (a backup restored, a second machine) replays a rotated
    # token: the server ends the whole session, and the command says what to do.
    stale = shell.session_file.read_text()
    shell.ok("whoami")
    current = shell.kept()["tokens"]["refreshToken"]
    shell.session_file.write_text(stale)
    line = _one_line_error(shell.run("whoami"), 4)
    assert line == "hitl-grpc whoami: session expired, run hitl-grpc login"
    assert not shell.session_file.exists()
    assert _refresh_refused(served, current) is grpc.StatusCode.UNAUTHENTICATED
    shell.login()
    assert shell.ok("whoami").startswith("admin ")
    # Commands at once each renew in turn, under the file's lock, from the pair the one
    # before kept: none replays a rotated token (which would end the session for all).
    together = [shell.start("whoami") for _ in range(4)]
    for proc, lines in together:
        code, out, err = _finish(proc, lines)
        assert (code, out.startswith("admin ")) == (0, True), err
    assert shell.ok("whoami").startswith("admin ")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_login_over_tls_keeps_what_to_trust(make_served: ServedFactory, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=hitl.internal",
         "-addext", "subjectAltName=DNS:hitl.internal"],
        capture_output=True, check=True, timeout=RUN_S,
    )  # fmt: skip
    served = make_served(HITL_TLS_CERT_FILE=str(cert), HITL_TLS_KEY_FILE=str(key))
    shell = Shell(served, tmp_path / "ana")
    del shell.env["HITL_ADDRESS"]
    address = served.address
    plain = shell.run("login", "--address", address, "--username", "admin", stdin=ADMIN_PASSWORD)
    _one_line_error(plain, 3, "unavailable")
    # The certificate names hitl.internal, not the address dialled.
    wrong = shell.run(
        "login", "--address", address, "--ca-file", str(cert), "--username", "admin",
        stdin=ADMIN_PASSWORD,
    )  # fmt: skip
    _one_line_error(wrong, 3, "unavailable")
    shell.ok(
        "login", "--address", address, "--ca-file", str(cert), "--server-name", "hitl.internal",
        "--username", "admin", stdin=ADMIN_PASSWORD,
    )  # fmt: skip
    kept = shell.kept()["connection"]
    assert kept == {
        "address": address,
        "tls": True,
        "ca_file": str(cert.resolve()),
        "server_name": "hitl.internal",
    }
    assert shell.ok("whoami").startswith("admin ")  # no options: the session's


def test_logout_revokes_the_kept_refresh_token(served: Served, tmp_path: Path) -> None:
    shell = Shell(served, tmp_path / "ana")
    shell.login()
    token = shell.kept()["tokens"]["refreshToken"]
    out = shell.ok("logout")
    assert "session revoked" in out
    assert not shell.session_file.exists()
    assert _refresh_refused(served, token) is grpc.StatusCode.UNAUTHENTICATED
    _one_line_error(shell.run("whoami"), 4, "not signed in")
    assert shell.ok("logout").strip() == "not signed in"


def test_credentials_in_the_environment_work_without_a_file(served: Served, tmp_path: Path) -> None:
    shell = Shell(served, tmp_path / "script")
    out = shell.ok("whoami", HITL_USERNAME="admin", HITL_PASSWORD=ADMIN_PASSWORD)
    assert out.startswith("admin ")
    assert not shell.session_file.exists()
    wrong = shell.run("whoami", HITL_USERNAME="admin", HITL_PASSWORD="not-the-password")
    _one_line_error(wrong, 4, "unauthenticated")


Started = tuple[subprocess.Popen[str], Lines]


def _follow(shell: Shell, analysis_id: str, *extra: str) -> tuple[Started, str]:
    proc, lines = shell.start("decisions", "follow", analysis_id, *extra)
    first = lines.after("", RUN_S)  # the state now: the stream is open
    assert first is not None, _finish(proc, lines)
    return (proc, lines), first


def test_follow_streams_to_the_verdict_and_exits_by_outcome(served: Served, tmp_path: Path) -> None:
    shell = Shell(served, tmp_path / "ana")
    shell.login()
    approved = served.submit(served.admin()).analysis_id
    proc, first = _follow(shell, approved)
    assert "pending  version 1" in first
    assert "claimed" in shell.ok("decisions", "claim", approved)
    out = shell.ok(
        "decisions", "approve", approved, "--action", "block_ip:203.0.113.7", "--note", "C2 seen"
    )
    assert out.strip() == f"approved {approved}: approved, version 3"
    code, out, err = _finish(*proc)
    assert code == 0, err
    assert "in_review  version 2  by admin" in out and "approved  version 3  by admin" in out
    shown = json.loads(shell.ok("decisions", "show", approved, "--json"))
    assert shown["resolution"]["approved_actions"] == [
        {"type": "ACTION_TYPE_BLOCK_IP", "target": "203.0.113.7", "description": ""}
    ]
    assert shown["resolution"]["notes"] == "C2 seen"

    rejected = served.submit(served.admin()).analysis_id
    proc, first = _follow(shell, rejected, "--json")
    assert json.loads(first)["status"] == "DECISION_STATUS_PENDING"
    shell.ok("decisions", "reject", rejected, "--note", "false positive")
    code, out, err = _finish(*proc)
    assert code == 10, err
    [last] = [json.loads(line) for line in out.splitlines()]
    assert last["status"] == "DECISION_STATUS_REJECTED"
    # Following a decided item prints its verdict and exits by it at once.
    assert shell.run("decisions", "follow", approved).returncode == 0
    assert shell.run("decisions", "follow", rejected).returncode == 10


def test_escalate_and_release_and_the_tables(served: Served, tmp_path: Path) -> None:
    shell = Shell(served, tmp_path / "ana")
    shell.login()
    first = served.submit(served.admin(), priority=decision_pb2.PRIORITY_CRITICAL).analysis_id
    second = served.submit(served.admin(), priority=decision_pb2.PRIORITY_LOW).analysis_id
    shell.ok("decisions", "claim", first)
    assert "pending" in shell.ok("decisions", "release", first)
    shell.ok("decisions", "escalate", second, "--reason", "needs an admin")
    table = shell.ok("decisions", "list").splitlines()
    assert table[0].split() == [
        "ID",
        "PRIORITY",
        "STATUS",
        "AGE",
        "SLA",
        "CLAIMED",
        "BY",
        "CONF",
        "ACTOR",
    ]
    assert table[1].split()[:3] == [first, "critical", "pending"]
    assert table[2].split()[:3] == [second, "low", "escalated"]
    only = shell.ok("decisions", "list", "--priority", "low", "--json")
    assert [d["analysis_id"] for d in json.loads(only)] == [second]
    shown = shell.ok("decisions", "show", second)
    assert "escalation:    needs an admin" in shown
    stats = shell.ok("decisions", "stats")
    assert "high      0" in stats and "critical  1" in stats  # zero counts are shown
    figures = json.loads(shell.ok("decisions", "stats", "--json"))
    assert figures["pending"] == "1" and figures["escalated"] == "1"
    assert figures["last_24h"]["approved"] == "0"


def test_failures_are_one_line_with_a_documented_exit_status(
    served: Served, tmp_path: Path
) -> None:
    shell = Shell(served, tmp_path / "ana")
    shell.login()
    _one_line_error(shell.run("decisions", "show", "no-such-analysis"), 6, "not found")
    done = served.submit(served.admin()).analysis_id
    shell.ok("decisions", "reject", done)
    _one_line_error(
        shell.run("decisions", "approve", done), 1, "failed precondition", "already REJECTED"
    )
    _one_line_error(shell.run("decisions", "show", ""), 1, "invalid argument")
    usage = shell.run("decisions", "approve", done, "--action", "nuke:everything")
    assert usage.returncode == 2 and "'nuke' is not one of" in usage.stderr
    gone = shell.run("whoami", "--address", "127.0.0.1:1")
    _one_line_error(gone, 4, "not signed in to 127.0.0.1:1")
    gone = shell.run(
        "whoami", "--address", "127.0.0.1:1", HITL_USERNAME="admin", HITL_PASSWORD="whatever-1"
    )
    _one_line_error(gone, 3, "unavailable")
    viewer = Shell(served, tmp_path / "viewer")
    viewer.login(*served.create_user(access_pb2.ROLE_VIEWER))
    _one_line_error(viewer.run("decisions", "claim", done), 5, "permission denied")
    _one_line_error(viewer.run("users", "list"), 5, "permission denied")


def test_mfa_setup_prints_a_qr_code_and_login_asks_for_the_code(
    make_served: ServedFactory, tmp_path: Path
) -> None:
    served = make_served(HITL_MFA_ISSUER="hitl-grpc staging")
    username, password = served.create_user(access_pb2.ROLE_ANALYST)
    shell = Shell(served, tmp_path / "ana")
    shell.login(username, password)
    proc, lines = shell.start("mfa", "setup")
    assert proc.stdin is not None
    proc.stdin.write(password + "\n")
    proc.stdin.flush()
    printed: list[str] = []
    while not printed or not printed[-1].startswith("secret: "):
        line = lines.after("", RUN_S)
        assert line is not None, _finish(proc, lines)
        printed.append(line)
    [uri] = [p.removeprefix("or enter it by hand: ") for p in printed if p.startswith("or enter")]
    secret = printed[-1].removeprefix("secret: ")
    # The QR code is text blocks.
    assert sum(1 for p in printed if p and set(p) <= set("█▀▄ ")) > 10
    assert "issuer=hitl-grpc%20staging" in uri and f"secret={secret}" in uri
    now = datetime.now(UTC)
    proc.stdin.write(pyotp.TOTP(secret).at(now) + "\n")
    proc.stdin.flush()
    code, out, err = _finish(proc, lines)
    assert code == 0, err
    assert f"MFA is on for {username} (analyst, active, mfa on)" in out
    assert password not in out
    # The ten backup codes (Lines strips each line).
    backup = [line for line in out.splitlines() if len(line) == 19 and line.count("-") == 3]
    assert len(backup) == 10
    shell.ok("logout")
    wrong = shell.run("login", "--username", username, stdin=f"{password}\n000000\n")
    _one_line_error(wrong, 4, "unauthenticated")
    # The confirming code's step is spent; the next step's code is within the window.
    code_now = pyotp.TOTP(secret).at(now + timedelta(seconds=30))
    out = shell.ok("login", "--username", username, stdin=f"{password}\n{code_now}\n")
    assert "mfa on" in out
    assert shell.ok("whoami").startswith(f"{username} (analyst")
    # A backup code works once.
    shell.ok("logout")
    shell.ok("login", "--username", username, stdin=f"{password}\n{backup[0]}\n")
    shell.ok("logout")
    _one_line_error(
        shell.run("login", "--username", username, stdin=f"{password}\n{backup[0]}\n"), 4
    )


def test_admins_manage_users_and_read_the_audit_trail_over_the_api(
    served: Served, tmp_path: Path
) -> None:
    shell = Shell(served, tmp_path / "admin")
    shell.login()
    out = shell.ok(
        "users", "create", "Carol", "--role", "analyst", "--password-stdin", stdin=PASSWORD
    )
    assert out.startswith("created Carol\tanalyst\tactive\t-\t")
    users = {u["username"]: u for u in json.loads(shell.ok("users", "list", "--json"))}
    assert users["Carol"]["role"] == "ROLE_ANALYST" and users["Carol"]["active"] is True
    assert "\tviewer\t" in shell.ok("users", "set-role", "carol", "viewer")
    assert "\tinactive\t" in shell.ok("users", "deactivate", "carol")
    carol = Shell(served, tmp_path / "carol")
    _one_line_error(carol.run("login", "--username", "carol", stdin=PASSWORD + "\n"), 5)
    shell.ok("users", "activate", "carol")
    out = shell.ok("users", "reset-password", "carol")
    new_password = out.split("password: ", 1)[1].split(" ", 1)[0]
    carol.login("carol", new_password)
    assert "unlocked Carol\t" in shell.ok("users", "unlock", "carol")
    assert "reset MFA of Carol\t" in shell.ok("users", "reset-mfa", "carol")
    _one_line_error(shell.run("users", "set-role", "nobody", "viewer"), 6, "no user 'nobody'")
    _one_line_error(
        shell.run(
            "users", "create", "carol", "--role", "viewer", "--password-stdin", stdin=PASSWORD
        ),
        1,
        "already exists",
    )
    # The server made and audited each change as the signed-in admin.
    trail = json.loads(shell.ok("audit", "list", "--kind", "user.created", "--json"))
    [created] = [e for e in trail["events"] if e["target"] == "Carol"]
    assert created["actor"] == "admin" and created["outcome"] == "AUDIT_OUTCOME_SUCCESS"
    table = shell.ok("audit", "list", "--target", "Carol", "--since", "1h").splitlines()
    assert table[0].split()[:4] == ["ID", "TIME", "ACTOR", "KIND"]
    assert len(table) > 3
    # Paging: two at a time, then on from the token it gave.
    done = shell.run("audit", "list", "--limit", "2")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3
    token = done.stderr.strip().removeprefix("more: --page-token ")
    page = json.loads(shell.ok("audit", "list", "--limit", "2", "--page-token", token, "--json"))
    firsts = json.loads(shell.ok("audit", "list", "--limit", "2", "--json"))["events"]
    assert [e["id"] for e in page["events"]] and not {e["id"] for e in page["events"]} & {
        e["id"] for e in firsts
    }


def test_version_comes_from_the_package(tmp_path: Path) -> None:
    from importlib import metadata

    done = subprocess.run(
        [*CLI, "--version"], capture_output=True, text=True, timeout=RUN_S, check=False
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"hitl-grpc {metadata.version('hitl-grpc')}"


def test_help_says_which_users_mode_is_for_recovery(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "users", "--help"], capture_output=True, text=True, timeout=RUN_S, check=False
    )
    assert done.returncode == 0
    assert "--direct" in done.stdout and "RECOVERY" in done.stdout


def _mfa_setup(shell: Shell, password: str) -> tuple[pyotp.TOTP, int]:
    """`mfa setup` through its prompts; the authenticator and the time step its code spent."""
    proc, lines = shell.start("mfa", "setup")
    assert proc.stdin is not None
    proc.stdin.write(password + "\n")
    proc.stdin.flush()
    secret = ""
    while not secret:
        line = lines.after("", RUN_S)
        assert line is not None, _finish(proc, lines)
        secret = line.removeprefix("secret: ") if line.startswith("secret: ") else ""
    totp = pyotp.TOTP(secret)
    now = time.time()
    proc.stdin.write(totp.at(now) + "\n")
    proc.stdin.flush()
    code, out, err = _finish(proc, lines)
    assert code == 0 and "MFA is on" in out, err
    return totp, int(now // STEP_S)


def _fresh_code(totp: pyotp.TOTP, spent_step: int) -> str:
    """A code of a later step than the last one this user spent, that the server takes now.

    The server accepts the steps around its own (one either way) and never one at or before
    the last spent: the next step's code is accepted at once unless that step is still two
    ahead, and then the clock is waited on (with a deadline) until it is only one ahead.
    """
    deadline = time.monotonic() + 3 * STEP_S
    wake = threading.Event()
    while (now_step := int(time.time() // STEP_S)) < spent_step:
        assert time.monotonic() < deadline, "the clock did not reach the next step"
        wake.wait((now_step + 1) * STEP_S - time.time())
    return totp.at(max(spent_step + 1, now_step) * STEP_S)


def _squeezed(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines()]


def test_a_killswitch_takes_two_analysts_each_with_a_step_up_code(
    served: Served, tmp_path: Path
) -> None:
    ana, bob = Shell(served, tmp_path / "ana"), Shell(served, tmp_path / "bob")
    names = {}
    codes: dict[str, tuple[pyotp.TOTP, int]] = {}
    for who, shell in (("ana", ana), ("bob", bob)):
        name, password = served.create_user(access_pb2.ROLE_ANALYST)
        names[who] = name
        shell.login(name, password)
        codes[who] = _mfa_setup(shell, password)
    analysis_id = served.submit(served.admin(), recommended_actions=[BLOCK, KILL]).analysis_id
    (proc, lines), first = _follow(bob, analysis_id)
    assert "pending  version 1" in first

    # Piped with nothing to read: the server's want of a code is asked for, and not answered.
    done = ana.run("decisions", "approve", analysis_id, "--recommended")
    _one_line_error(done, 2, "no input for step-up MFA code")
    assert "step-up MFA code: " in done.stderr
    assert "claimed" in ana.ok("decisions", "claim", analysis_id)
    ana_code = _fresh_code(*codes["ana"])
    out = ana.ok("decisions", "approve", analysis_id, "--recommended", "--otp", ana_code)
    assert out.strip() == (
        f"approved {analysis_id}: pending, version 3; waiting for another approver: "
        f"ACTIVATE_KILLSWITCH segment-9 1/2 approved by {names['ana']}"
    )
    # The same code again is spent: the server's words, exit 5 (permission denied).
    again = ana.run("decisions", "approve", analysis_id, "--recommended", "--otp", ana_code)
    _one_line_error(again, 5, "permission denied", "wrong, expired or already used")

    shown = _squeezed(bob.ok("decisions", "show", analysis_id))
    assert f"verdicts: BLOCK_IP 203.0.113.7 approved 1/1 approved by {names['ana']}" in shown
    assert f"ACTIVATE_KILLSWITCH segment-9 pending 1/2 approved by {names['ana']}" in shown
    assert "lease: epoch 1, not held" in shown
    body = json.loads(bob.ok("decisions", "show", analysis_id, "--json"))
    kill = next(
        v for v in body["action_verdicts"] if v["type"] == "ACTION_TYPE_ACTIVATE_KILLSWITCH"
    )
    assert (kill["status"], kill["required_approvals"]) == ("ACTION_VERDICT_STATUS_PENDING", 2)
    assert kill["approved_by"] == [names["ana"]] and len(kill["action_hash"]) == 64

    # Bob gives no --otp: asked for, the code is read from the piped line.
    bob_code = _fresh_code(*codes["bob"])
    out = bob.ok(
        "decisions", "approve", analysis_id, "--action", "activate_killswitch:segment-9",
        stdin=bob_code + "\n",
    )  # fmt: skip
    assert out.strip() == f"approved {analysis_id}: approved, version 4"
    code, rest, err = _finish(proc, lines)
    assert code == 0, err
    followed = rest.splitlines()
    assert any(
        f"pending  version 3  ACTIVATE_KILLSWITCH segment-9 1/2 approved by {names['ana']}" in line
        for line in followed
    ), followed
    assert f"approved  version 4  by {names['bob']}" in followed[-1]
    final = json.loads(ana.ok("decisions", "show", analysis_id, "--json"))
    kill = next(
        v for v in final["action_verdicts"] if v["type"] == "ACTION_TYPE_ACTIVATE_KILLSWITCH"
    )
    assert kill["approved_by"] == [names["ana"], names["bob"]]


def test_a_stale_lease_epoch_is_refused_and_reassign_moves_the_lease(
    served: Served, tmp_path: Path
) -> None:
    ana, bob = Shell(served, tmp_path / "ana"), Shell(served, tmp_path / "bob")
    ana_name, password = served.create_user(access_pb2.ROLE_ANALYST)
    bob_name, _ = served.create_user(access_pb2.ROLE_ANALYST)
    ana.login(ana_name, password)
    bob.login(bob_name, password)
    analysis_id = served.submit(served.admin()).analysis_id
    out = ana.ok("decisions", "claim", analysis_id)
    assert out.startswith(f"claimed {analysis_id}: in_review, version 2; lease epoch 1 until ")
    ana.ok("decisions", "release", analysis_id, "--lease-epoch", "1")
    claimed = json.loads(bob.ok("decisions", "claim", analysis_id, "--json"))
    assert claimed["lease"]["epoch"] == "2" and claimed["decision"]["claimed_by"] == bob_name
    stale = ana.run(
        "decisions", "approve", analysis_id, "--action", "block_ip:203.0.113.7",
        "--lease-epoch", "1",
    )  # fmt: skip
    _one_line_error(stale, 1, "failed precondition", "lease epoch 1", "stale", bob_name)
    _one_line_error(
        ana.run("decisions", "escalate", analysis_id, "--reason", "x", "--lease-epoch", "1"),
        1,
        "stale",
    )
    renewed = bob.ok("decisions", "renew", analysis_id)
    assert renewed.startswith(f"renewed {analysis_id}: in_review, version ")
    assert "; lease epoch 2 until " in renewed
    moved = bob.ok("decisions", "reassign", analysis_id, "--to", ana_name)
    assert moved.startswith(f"reassigned {analysis_id} to {ana_name}: in_review, version ")
    assert "; lease epoch 3 until " in moved
    _one_line_error(
        bob.run("decisions", "reject", analysis_id, "--lease-epoch", "2"), 1, "lease epoch 2"
    )
    shown = _squeezed(ana.ok("decisions", "show", analysis_id))
    assert any(line.startswith(f"lease: epoch 3, {ana_name} until ") for line in shown), shown
    out = ana.ok("decisions", "reject", analysis_id, "--lease-epoch", "3", "--note", "mine now")
    assert out.strip().startswith(f"rejected {analysis_id}: rejected, version ")
    _one_line_error(
        bob.run("decisions", "reassign", "no-such-analysis", "--to", ana_name), 6, "not found"
    )


def test_several_ids_are_one_bulk_call_with_a_line_per_item(served: Served, tmp_path: Path) -> None:
    shell = Shell(served, tmp_path / "ana")
    shell.login(*served.create_user(access_pb2.ROLE_ANALYST))
    fresh, decided, other = (served.submit(served.admin()).analysis_id for _ in range(3))
    shell.ok("decisions", "reject", decided)
    done = shell.run(
        "decisions", "reject", fresh, decided, "no-such-analysis", "--note", "known scanner"
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout.splitlines() == [
        f"rejected {fresh}: rejected, version 2",
        f"{decided}: failed precondition: decision {decided} is already REJECTED",
        "no-such-analysis: not found: no decision no-such-analysis",
    ]
    _one_line_error(done, 1, "2 of 3 refused")
    assert json.loads(shell.ok("decisions", "show", fresh, "--json"))["resolution"]["notes"] == (
        "known scanner"
    )
    more = served.submit(served.admin()).analysis_id
    out = shell.ok("decisions", "approve", other, more, "--action", "block_ip:203.0.113.7")
    assert out.splitlines() == [
        f"approved {other}: approved, version 2",
        f"approved {more}: approved, version 2",
    ]
    again = shell.run("decisions", "reject", other, more, "--json")
    assert again.returncode == 1, again.stderr
    results = json.loads(again.stdout)
    assert [(r["analysis_id"], r["code"]) for r in results] == [(other, 9), (more, 9)]
    usage = shell.run("decisions", "approve", other, more, "--expected-version", "1")
    _one_line_error(usage, 2, "give one ID")


def test_a_service_account_is_bound_to_a_certificate_subject(
    served: Served, tmp_path: Path
) -> None:
    shell = Shell(served, tmp_path / "admin")
    shell.login()
    out = shell.ok("users", "create", "candi", "--role", "service", "--certificate-subject",
                   "CN=candi,O=SOC")  # fmt: skip
    assert out.startswith("created candi\tservice\tactive\t-\t")
    assert out.rstrip("\n").endswith("\tCN=candi,O=SOC") and "password" not in out
    listed = {
        line.split("\t")[0]: line.split("\t") for line in shell.ok("users", "list").splitlines()
    }
    assert listed["candi"][5] == "CN=candi,O=SOC" and listed["admin"][5] == "-"
    users = {u["username"]: u for u in json.loads(shell.ok("users", "list", "--json"))}
    assert users["candi"]["certificate_subject"] == "CN=candi,O=SOC"
    out = shell.ok("users", "set-certificate", "candi", "CN=candi-2,O=SOC")
    assert out.rstrip("\n").endswith("\tCN=candi-2,O=SOC")
    out = shell.ok("users", "set-certificate", "candi", "--clear")
    assert out.rstrip("\n").endswith("\t-")
    users = {u["username"]: u for u in json.loads(shell.ok("users", "list", "--json"))}
    assert users["candi"]["certificate_subject"] == ""
    # Only a SERVICE account can be bound; one account per subject.
    analyst, _ = served.create_user(access_pb2.ROLE_ANALYST)
    _one_line_error(
        shell.run("users", "set-certificate", analyst, "CN=x,O=SOC"), 1, "certificate_subject"
    )
    shell.ok("users", "set-certificate", "candi", "CN=candi,O=SOC")
    _one_line_error(
        shell.run("users", "create", "candi-b", "--role", "service", "--certificate-subject",
                  "CN=candi,O=SOC"),
        1,
        "already exists",
    )  # fmt: skip
