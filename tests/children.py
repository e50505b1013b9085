"""Child processes as tests and bench/ run them: the serve command, stdout line by line.

Imports nothing of the server or of pytest, so bench/ can use it too.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from typing import IO, Final

# `hitl-grpc serve` with the interpreter running the caller (its venv, its coverage hooks).
SERVE: Final = (sys.executable, "-m", "hitl_grpc.cli", "serve")


class Lines:
    """A child's stdout line by line, read by a thread so that every wait has a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stream = stream
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._stream:
            self._queue.put(line.strip())
        self._queue.put(None)

    def after(self, prefix: str, timeout_s: float) -> str | None:
        """The rest of the next line starting with `prefix`; None once the stream has ended.

        Raises TimeoutError when no such line comes within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise TimeoutError(f"no {prefix!r} line within {timeout_s} s") from None
            if line is None:
                self._queue.put(None)
                return None
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
