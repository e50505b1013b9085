"""Bounds on what callers without a token can hold open or make the service write.

Public streams (health Watch, reflection) cost memory for as long as they stay open, so
their number is capped per client address and per process. A junk RefreshToken costs an
audited transaction, so invalid refresh tokens are counted per client address in the
throttle store (shared by replicas): once locked, the address is refused before any
write, and the lock itself is audited once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

import grpc

from hitl_grpc.accounts.throttle import SUBJECT_MAX, peer_host
from hitl_grpc.accounts.trail import AuditTrail
from hitl_grpc.auth.policy import Policy, policy_for
from hitl_grpc.config import Settings
from hitl_grpc.domain import errors
from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.ports import ThrottleState, UnitOfWorkFactory
from hitl_grpc.domain.values import AuditOutcome
from hitl_grpc.interceptors import Around

log = logging.getLogger("hitl_grpc.auth")

# Public methods whose failures an anonymous caller can repeat at will, each one audited.
THROTTLED: Final = frozenset({"/hitl.v1.AuthService/RefreshToken"})
SUBJECT_PREFIX: Final = "refresh-peer:"
REFRESH_LOCKED = "too many invalid refresh tokens from this address; try again later"
REFRESH_BUSY = "too many refresh calls in flight from this address; retry shortly"


@dataclass(frozen=True)
class PublicLimits:
    """How much unauthenticated work one client address, and everyone together, may cause."""

    streams_per_peer: int = 256
    streams_total: int = 2048
    refresh_failures_per_peer: int = 20
    refresh_window: timedelta = timedelta(minutes=15)
    refresh_lockout: timedelta = timedelta(minutes=1)


def _after_failure(state: ThrottleState, now: datetime, limits: PublicLimits) -> ThrottleState:
    """The counter after one more invalid refresh token: a full window locks it."""
    if state.locked_until is not None and now < state.locked_until:
        return state  # a call that was already in flight when the lock was set
    failures, started = state.failures, state.window_started_at
    if state.locked_until is not None or now - started >= limits.refresh_window:
        failures, started = 0, now
    failures += 1
    if failures >= limits.refresh_failures_per_peer:
        return replace(
            state,
            failures=0,
            window_started_at=now,
            locked_until=now + limits.refresh_lockout,
            lockouts=state.lockouts + 1,
        )
    return replace(state, failures=failures, window_started_at=started, locked_until=None)


class _Gauge:
    """Counts held per client address and in total, refusing beyond the caps."""

    def __init__(self, per_peer: int, total: float) -> None:
        self._per_peer = per_peer
        self._total_cap = total
        self._by_host: dict[str, int] = {}
        self._total = 0

    def acquire(self, host: str) -> str | None:
        """Takes a slot for `host`; or says which cap is full."""
        if self._total >= self._total_cap:
            return f"this server already holds {self._total_cap:g}"
        held = self._by_host.get(host, 0)
        if held >= self._per_peer:
            return f"this address already holds {self._per_peer}"
        self._by_host[host] = held + 1
        self._total += 1
        return None

    def release(self, host: str) -> None:
        """Gives a slot back."""
        self._total -= 1
        left = self._by_host[host] - 1
        if left:
            self._by_host[host] = left
        else:
            del self._by_host[host]


class PublicLimiter:
    """Caps public streams and throttles failing RefreshToken calls per client address.

    Runs inside the error mapping (runtime/calls.py), which turns its refusals into
    RESOURCE_EXHAUSTED (with RetryInfo for a lock).
    """

    def __init__(
        self,
        limits: PublicLimits,
        policies: Mapping[str, Policy],
        uow: UnitOfWorkFactory,
        trail: AuditTrail,
        clock: Clock,
    ) -> None:
        self._limits = limits
        self._policies = policies
        self._uow = uow
        self._trail = trail
        self._clock = clock
        self._streams = _Gauge(limits.streams_per_peer, limits.streams_total)
        # Bounds a burst: calls judged before the lock can land are at most this many.
        self._refreshing = _Gauge(limits.refresh_failures_per_peer, math.inf)

    def around_for(self, method: str, *, streams: bool) -> Around | None:
        """What each call of `method` runs in: a public stream holds a slot, a throttled
        method is counted; None for every other method."""
        policy = policy_for(method, self._policies)
        if policy is None or not policy.public:
            return None
        if method in THROTTLED:
            return self._throttled
        if streams:
            return self._stream_slot
        return None

    @asynccontextmanager
    async def _stream_slot(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[None]:
        host = peer_host(context.peer() or "")
        full = self._streams.acquire(host)
        if full is not None:
            raise errors.ResourceExhausted(
                f"too many open streams without a token: {full}; close some, or retry later"
            )
        try:
            yield
        finally:
            self._streams.release(host)

    @asynccontextmanager
    async def _throttled(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        peer = context.peer() or ""
        host = peer_host(peer)
        subject = SUBJECT_PREFIX + host[:SUBJECT_MAX]
        if self._refreshing.acquire(host) is not None:
            raise errors.RateLimited(REFRESH_BUSY, retry_after_s=1)
        try:
            await self._refuse_if_locked(subject)
            try:
                yield
            except errors.Unauthenticated:
                await self._count_failure(subject, host, peer)
                raise
        finally:
            self._refreshing.release(host)

    async def _refuse_if_locked(self, subject: str) -> None:
        now = self._clock.now()
        async with self._uow(readonly=True) as uow:
            states = await uow.throttle.peek([subject])
        waits = [
            (s.locked_until - now).total_seconds()
            for s in states
            if s.locked_until is not None and s.locked_until > now
        ]
        if waits:
            raise errors.RateLimited(REFRESH_LOCKED, retry_after_s=math.ceil(max(waits)))

    async def _count_failure(self, subject: str, host: str, peer: str) -> None:
        now = self._clock.now()
        try:
            async with self._uow() as uow:
                state = await uow.throttle.lock(subject, now)
                counted = _after_failure(state, now, self._limits)
                if counted == state:
                    return
                await uow.throttle.save(counted)
                if counted.locked_until is not None:
                    # One row per lock: while it holds, refused calls write nothing.
                    await uow.audit.append(
                        self._trail.record(
                            "auth.refresh.throttled",
                            actor="",
                            target=host,
                            peer=peer,
                            outcome=AuditOutcome.DENIED,
                            failures=str(self._limits.refresh_failures_per_peer),
                            locked_until=counted.locked_until.isoformat(),
                        )
                    )
                await uow.commit()
        except errors.DomainError as exc:
            # The caller still gets its own answer; an uncounted failure is the lesser harm.
            log.warning("could not count an invalid refresh token: %s", exc.message)


def public_limits(
    settings: Settings,
    policies: Mapping[str, Policy],
    uow: UnitOfWorkFactory,
    trail: AuditTrail,
    clock: Clock,
) -> PublicLimiter:
    """The limiter with the limits the settings give."""
    limits = PublicLimits(
        streams_per_peer=settings.public_streams_per_peer,
        streams_total=settings.public_streams_max,
        refresh_failures_per_peer=settings.refresh_max_failures_per_peer,
        refresh_window=settings.login_window,
        refresh_lockout=settings.refresh_lockout,
    )
    return PublicLimiter(limits, policies, uow, trail, clock)
