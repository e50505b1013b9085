"""Keeps the queue view fed: one watch stream at a time, and every failure named."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from typing import Final

import grpc
from hitl.v1 import decision_pb2

from hitl_grpc.cli.watch.queue import QueueView
from hitl_grpc.cli.watch.text import shown
from hitl_grpc.client import WATCH_RETRYABLE, Backoff, HitlClient, HitlClientError

# Between attempts to reopen the stream: fast after a blip, at most a few seconds apart.
RECONNECT: Final = Backoff(first_s=0.2, max_s=3.0)
# The client gives a stream up at its first failure (no budget): the screen resumes it
# itself, so that every failure reaches the status line as it happens.
STREAM_BACKOFF: Final = Backoff(first_s=0.2, max_s=3.0, budget_s=0.0)

# What grpc's transport messages mean, in the words an analyst would use.
_CAUSES: Final = (
    (re.compile(r"connection refused", re.I), "connection refused"),
    (re.compile(r"connection reset", re.I), "connection reset"),
    (re.compile(r"(errors resolving|dns resolution failed|name not found)", re.I), ""),
    (re.compile(r"(timed out|timeout occurred|deadline exceeded)", re.I), "timed out"),
    (re.compile(r"(ssl|tls|handshake|certificate)", re.I), "TLS handshake failed"),
    (re.compile(r"socket closed|broken pipe|end of tcp stream", re.I), "connection closed"),
)
_HOST: Final = re.compile(r"(?:errors resolving|dns resolution failed for) ([^\s:\]]+)", re.I)
MAX_ERROR_CHARS: Final = 120


def describe(error: HitlClientError, *, whole: bool = False) -> str:
    """A failure as the status line names it: "connection refused", "cannot resolve x".

    The server's message is text from afar too: its control characters are spelled out.
    With `whole`, a refusal's message is kept in full (it says what to do next).
    """
    message = shown(error.message)
    for pattern, words in _CAUSES:
        if pattern.search(message):
            if words:
                return words
            host = _HOST.search(message)
            return f"cannot resolve {host.group(1)}" if host else "cannot resolve the host"
    if error.code is grpc.StatusCode.UNAVAILABLE and not message:
        return "server unavailable"
    name = error.code.name.lower().replace("_", " ")
    text = f"{name}: {message}" if message else name
    return text if whole or len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


async def follow(
    client: HitlClient,
    view: QueueView,
    changed: Callable[[], None],
    priorities: Iterable[decision_pb2.Priority.ValueType] = (),
    *,
    backoff: Backoff = RECONNECT,
) -> None:
    """Feeds `view` until cancelled; raises the first failure that retrying cannot fix.

    Each attempt opens a fresh stream with a snapshot rather than resuming from a cursor:
    a resumed stream says nothing until the next event or heartbeat, so the screen could
    not tell "live again" from "still down"; a snapshot proves it within one read.
    """
    wanted = list(priorities)
    attempt = 0
    while True:
        view.connecting()
        try:
            async for change in client.watch_pending(wanted):
                view.apply(change)
                if view.live:
                    attempt = 0
                changed()
        except HitlClientError as exc:
            if exc.code not in WATCH_RETRYABLE:
                raise
            view.interrupted(describe(exc))
            changed()
        await asyncio.sleep(backoff.delay(attempt))
        attempt += 1
