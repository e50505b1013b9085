"""A real terminal for screen programs: tmux runs the command, send-keys types, capture-pane reads.

Each `Terminal` has a tmux server of its own (`-L` with a fresh socket name), so tests never
share one and the caller's tmux is never touched. Waits poll the screen under a deadline and,
on failure, report the screen as it last was and the program's exit status if it ended.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Self

import pytest

WAIT_S: Final = 20.0
POLL_S: Final = 0.05
TMUX_S: Final = 10.0
SESSION: Final = "screen"


def tmux_binary() -> str:
    """tmux's path; a missing tmux fails on CI (make installs it) and skips elsewhere."""
    found = shutil.which("tmux")
    if found is None:
        message = "tmux is not installed: run 'deploy/need.sh tmux tmux' (make pytest does)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


class Terminal:
    """One program in a tmux pane of a fixed size."""

    def __init__(self, workdir: Path, *, width: int = 160, height: int = 48) -> None:
        self._tmux = tmux_binary()
        self._socket = f"hitl-test-{uuid.uuid4().hex[:12]}"
        self._status = workdir / f"screen-{uuid.uuid4().hex[:6]}.status"
        self.width = width
        self.height = height
        self.last = ""

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [self._tmux, "-L", self._socket, "-f", os.devnull, *args],
            capture_output=True,
            text=True,
            timeout=TMUX_S,
            check=False,
        )
        if done.returncode != 0:
            pytest.fail(f"tmux {' '.join(args[:2])} failed: {done.stderr.strip()}")
        return done.stdout

    def start(self, argv: Sequence[str], env: dict[str, str]) -> Self:
        """Runs `argv` with `env` added; its exit status is kept once it ends."""
        assignments = [f"{k}={v}" for k, v in env.items()]
        # The pane's size, not a size the caller's environment claims (pytest sets COLUMNS).
        command = shlex.join(["env", "-u", "COLUMNS", "-u", "LINES", *assignments, *argv])
        # The shell stays after the program so that its last screen and status can be read.
        script = f'{command}; echo "exit=$?" > {shlex.quote(str(self._status))}; exec sleep 600'
        self._run(
            "new-session", "-d", "-x", str(self.width), "-y", str(self.height), "-s", SESSION,
            "sh", "-c", script,
        )  # fmt: skip
        return self

    def screen(self) -> str:
        """What the pane shows now, as plain text."""
        self.last = self._run("capture-pane", "-p", "-t", SESSION)
        return self.last

    def lines(self) -> list[str]:
        """The pane's lines now."""
        return self.screen().split("\n")

    def exit_status(self) -> str | None:
        """ "exit=N" once the program has ended."""
        try:
            return self._status.read_text().strip() or None
        except FileNotFoundError:
            return None

    def send(self, *keys: str) -> None:
        """tmux key names: "Down", "Enter", "Space", "Tab", "Escape", "q"."""
        self._run("send-keys", "-t", SESSION, *keys)

    def type(self, text: str) -> None:
        """Literal text, as if typed."""
        self._run("send-keys", "-t", SESSION, "-l", text)

    def title(self) -> str:
        """The pane's title, which an OSC escape from the program would change."""
        return self._run("display-message", "-p", "-t", SESSION, "#{pane_title}").strip()

    def wait_for(
        self, check: Callable[[str], bool] | str, what: str = "", timeout_s: float = WAIT_S
    ) -> str:
        """The screen once `check` holds for it (a str: once the screen contains it)."""
        test = (lambda text: check in text) if isinstance(check, str) else check
        label = what or (repr(check) if isinstance(check, str) else "the expected screen")
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.screen()
            if test(text):
                return text
            status = self.exit_status()
            if status is not None:
                pytest.fail(f"the program ended ({status}) before {label}:\n{text}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {label} within {timeout_s} s; the screen:\n{text}")
            time.sleep(POLL_S)

    def wait_for_exit(self, timeout_s: float = WAIT_S) -> str:
        """The program's "exit=N" once it has ended."""
        deadline = time.monotonic() + timeout_s
        while (status := self.exit_status()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"the program did not end within {timeout_s} s:\n{self.screen()}")
            time.sleep(POLL_S)
        return status

    def close(self) -> None:
        """Ends the tmux server and everything in it."""
        subprocess.run(
            [self._tmux, "-L", self._socket, "kill-server"],
            capture_output=True,
            timeout=TMUX_S,
            check=False,
        )
