"""Brute-force protection: failure counters per username and per peer host, in the database."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from urllib.parse import unquote

from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.errors import RateLimited
from hitl_grpc.domain.ports import ThrottleState, UnitOfWork
from hitl_grpc.domain.values import AuditRecord, username_key

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
    # A locked peer still lets a username in that signed in fully from it this recently,
    # so one address guessing (an office NAT) does not lock out everyone behind it;
    # zero makes a peer lock refuse every username.
    peer_trust: timedelta = timedelta(days=30)


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
    """The password counter of a username, whether or not such an account exists."""
    return "user:" + username_key(username)[:SUBJECT_MAX]


def mfa_subject(username: str) -> str:
    """The second-factor counter of a username: a right password never clears it."""
    return "mfa:" + username_key(username)[:SUBJECT_MAX]


def trust_subject(username: str, peer: str) -> str:
    """The row remembering when this username last signed in fully from this peer host."""
    seen = f"{peer_host(peer)}\0{username_key(username)}"
    return "seen:" + hashlib.sha256(seen.encode()).hexdigest()


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
    """Counts sign-in attempts per account before they are judged, failures per peer after.

    An attempt on an account is charged as a failure, committed under the counter's row lock,
    before its password or code is checked, and forgiven if it turns out right: however many
    guesses race, at most the limit of them are judged per lock. Peers are only checked
    before and counted after, so a storm of correct sign-ins from one address never queues
    on one row; a burst from one address may pass its peer limit by the attempts in flight.
    """

    def __init__(self, limits: LoginLimits, clock: Clock) -> None:
        self.limits = limits
        self._clock = clock

    async def charge(
        self, uow: UnitOfWork, account: str, username: str, peer: str, refused: AuditRecord
    ) -> None:
        """Counts one attempt against `account` (a subject); the caller commits.

        If the account or the peer is locked, appends `refused` to the audit trail, commits
        and raises RateLimited instead.
        """
        now = self._clock.now()
        state = await uow.throttle.lock(account, now)
        waits = [_wait(state, now)]
        for peer_state in await uow.throttle.peek([peer_subject(peer)]):
            if _wait(peer_state, now) and not await self._trusted(uow, username, peer, now):
                waits.append(_wait(peer_state, now))
        if max(waits) > 0:
            await uow.audit.append(refused)
            await uow.commit()
            raise RateLimited(LOCKED, retry_after_s=math.ceil(max(waits)))
        await uow.throttle.save(after_failure(state, now, self.limits.max_failures, self.limits))

    async def _trusted(self, uow: UnitOfWork, username: str, peer: str, now: datetime) -> bool:
        if self.limits.peer_trust <= timedelta(0):
            return False
        seen = await uow.throttle.peek([trust_subject(username, peer)])
        return any(now - s.window_started_at < self.limits.peer_trust for s in seen)

    async def fail(self, uow: UnitOfWork, peer: str) -> None:
        """Counts a judged failure against the peer, in the caller's transaction."""
        now = self._clock.now()
        state = await uow.throttle.lock(peer_subject(peer), now)
        await uow.throttle.save(
            after_failure(state, now, self.limits.max_failures_per_peer, self.limits)
        )

    async def forgive(self, uow: UnitOfWork, account: str) -> None:
        """Clears an account subject's count and lock after a right password or code."""
        await uow.throttle.clear(account)

    async def signed_in(self, uow: UnitOfWork, username: str, peer: str) -> None:
        """Remembers a full sign-in of this username from this peer (see LoginLimits.peer_trust)."""
        now = self._clock.now()
        state = await uow.throttle.lock(trust_subject(username, peer), now)
        await uow.throttle.save(replace(state, window_started_at=now))


def _wait(state: ThrottleState, now: datetime) -> float:
    if state.locked_until is None or state.locked_until <= now:
        return 0.0
    return (state.locked_until - now).total_seconds()
