"""Brute-force protection: failure counters per username and per peer host, in the database."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from urllib.parse import unquote

from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.errors import RateLimited
from hitl_grpc.domain.ports import ThrottleState, UnitOfWork
from hitl_grpc.domain.values import username_key

LOCKED = "too many failed attempts; try again later"
SUBJECT_MAX = 380


@dataclass(frozen=True)
class LoginLimits:
    """How many failures lock a subject, and for how long."""

    max_failures: int = 5
    # Higher than per username: many people may sit behind one NAT or proxy address.
    max_failures_per_peer: int = 20
    window: timedelta = timedelta(minutes=15)
    # The first lockout; each further one doubles it, up to max_lockout.
    lockout: timedelta = timedelta(minutes=1)
    max_lockout: timedelta = timedelta(days=1)


def peer_host(peer: str) -> str:
    """The client address without its port: `ipv4:10.0.0.1:5000` -> `10.0.0.1`."""
    # Newer grpc percent-encodes the brackets of an IPv6 peer: ipv6:%5B::1%5D:5000.
    scheme, sep, rest = unquote(peer).partition(":")
    if not sep or scheme not in ("ipv4", "ipv6"):
        return peer
    if rest.startswith("["):
        return rest[1:].split("]", 1)[0]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest


def user_subject(username: str) -> str:
    """The counter of a username, whether or not such an account exists."""
    return "user:" + username_key(username)[:SUBJECT_MAX]


def peer_subject(peer: str) -> str:
    """The counter of a client address."""
    return "peer:" + peer_host(peer)[:SUBJECT_MAX]


def after_failure(
    state: ThrottleState, now: datetime, limit: int, limits: LoginLimits
) -> ThrottleState:
    """The counter after one more failure: a full window locks it, each lock longer."""
    lockouts = state.lockouts
    if state.locked_until is not None and now >= state.locked_until + limits.window:
        lockouts = 0  # a quiet window after the last lock forgives the earlier ones
    failures, started = state.failures, state.window_started_at
    if now - started >= limits.window:
        failures, started = 0, now
    failures += 1
    locked_until = state.locked_until
    if failures >= limit:
        delay = min(limits.lockout * (2**lockouts), limits.max_lockout)
        locked_until, lockouts, failures, started = now + delay, lockouts + 1, 0, now
    return replace(
        state,
        failures=failures,
        window_started_at=started,
        locked_until=locked_until,
        lockouts=lockouts,
    )


class LoginThrottle:
    """Refuses sign-in attempts for a locked username or peer; counts failures."""

    def __init__(self, limits: LoginLimits, clock: Clock) -> None:
        self.limits = limits
        self._clock = clock

    def subjects(self, username: str, peer: str) -> list[str]:
        """The counters an attempt by this username from this peer touches."""
        return sorted({user_subject(username), peer_subject(peer)})

    def _limit(self, subject: str) -> int:
        if subject.startswith("peer:"):
            return self.limits.max_failures_per_peer
        return self.limits.max_failures

    async def check(self, uow: UnitOfWork, subjects: list[str]) -> None:
        """RateLimited (with the wait) if any subject is locked now."""
        now = self._clock.now()
        waits = [
            (s.locked_until - now).total_seconds()
            for s in await uow.throttle.peek(subjects)
            if s.locked_until is not None and s.locked_until > now
        ]
        if waits:
            raise RateLimited(LOCKED, retry_after_s=math.ceil(max(waits)))

    async def record_failure(self, uow: UnitOfWork, subjects: list[str]) -> None:
        """Counts one failure against each subject, in the caller's transaction."""
        now = self._clock.now()
        # Sorted, so two replicas locking the same rows never wait on each other in a cycle.
        for subject in sorted(subjects):
            state = await uow.throttle.lock(subject, now)
            await uow.throttle.save(after_failure(state, now, self._limit(subject), self.limits))

    async def forgive(self, uow: UnitOfWork, username: str) -> None:
        """Clears a username's failures after it signed in; the peer's count stays."""
        await uow.throttle.clear(user_subject(username))
