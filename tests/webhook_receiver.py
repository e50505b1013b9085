"""A real HTTP webhook receiver on loopback that accepts, fails or stalls on command."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["accept", "fail", "stall"]


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    key: str
    event: str
    body: dict[str, Any]
    signed: bool
    answer: int  # the status sent back, 0 for a stalled request never answered in time


class Receiver:
    """Records every request; `mode` says how the next ones are answered."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.mode: Mode = "accept"
        self.seen: list[Received] = []
        self._changed = threading.Condition()
        self._release = threading.Event()
        self.url = ""

    def handle(self, headers: Any, raw: bytes) -> int:
        """The status to answer a request with, after recording it."""
        stamp = headers.get("X-Hitl-Timestamp", "")
        mac = hmac.new(self.secret.encode(), f"{stamp}.".encode() + raw, hashlib.sha256)
        signed = hmac.compare_digest(headers.get("X-Hitl-Signature", ""), f"v1={mac.hexdigest()}")
        mode = self.mode
        answer = {"accept": 200, "fail": 503, "stall": 0}[mode]
        with self._changed:
            self.seen.append(
                Received(
                    key=headers.get("Idempotency-Key", ""),
                    event=headers.get("X-Hitl-Event", ""),
                    body=json.loads(raw),
                    signed=signed,
                    answer=answer,
                )
            )
            self._changed.notify_all()
        if mode == "stall":
            # Held past the sender's timeout, then refused: a stalled request never counts.
            self._release.wait(30)
            return 503
        return answer

    def wait_for(self, check: Callable[[list[Received]], bool], timeout_s: float = 30) -> None:
        """Blocks until `check(seen)` holds; fails after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not check(self.seen):
                left = deadline - time.monotonic()
                assert left > 0, f"receiver never saw it; saw {self.seen}"
                self._changed.wait(left)

    def accepted(self) -> Counter[str]:
        """How many times each idempotency key was answered 2xx."""
        with self._changed:
            return Counter(r.key for r in self.seen if 200 <= r.answer < 300)

    def release(self) -> None:
        """Lets stalled requests finish (with a refusal)."""
        self._release.set()


@contextmanager
def running_receiver(secret: str) -> Iterator[Receiver]:
    """A receiver on 127.0.0.1 (an ephemeral port), stopped afterwards."""
    receiver = Receiver(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.handle(self.headers, raw)
            try:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender gave up on this one already

        def log_message(self, format: str, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{http.server_address[1]}/hooks"
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release()
        http.shutdown()
        http.server_close()
        thread.join(10)
