"""The id of the request being served, for the audit rows it causes.

Set per call by the access-log interceptor (the caller's `x-request-id`, or a new one) and
per pass by the sweeper; empty where nothing set it. Per task, like the caller's principal,
so concurrent calls never see each other's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_current: ContextVar[str] = ContextVar("hitl_request_id", default="")


def current() -> str:
    """The id of the request this task serves, or '' outside any."""
    return _current.get()


def bind(request_id: str) -> None:
    """Makes `request_id` the current one for the rest of this task (one call's task)."""
    _current.set(request_id)


@contextmanager
def bound(request_id: str) -> Iterator[None]:
    """`request_id` is the current one inside the block, and the old one again after it."""
    token = _current.set(request_id)
    try:
        yield
    finally:
        _current.reset(token)
