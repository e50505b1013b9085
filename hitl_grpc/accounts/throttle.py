"""Brute-force protection: failure counters per username and per peer host, in the database."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeVar
from urllib.parse import unquote

from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.errors import RateLimited
from hitl_grpc.domain.ports import ThrottleState, UnitOfWork, UnitOfWorkFactory
from hitl_grpc.domain.values import AuditRecord, username_key

LOCKED = "too many failed attempts; try again later"
BUSY = "too many sign-in attempts in progress for this account; try again"
SUBJECT_MAX = 380
# How long an attempt waits for a slot of its account, and how often it looks again.
ADMIT_WAIT_S = 10.0
ADMIT_POLL_S = 0.5
# Locks whose first refusal a process remembers having audited.
REFUSALS_REMEMBERED = 10_000
# An attempt counted in flight for longer than this was left by a process that died.
BUSY_TTL = timedelta(minutes=1)
T = TypeVar("T")


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


def busy_subject(account: str) -> str:
    """The row counting the attempts on an account subject now being judged."""
    return "busy:" + account


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


@dataclass
class _Slot:
    admitting: asyncio.Lock = field(default_factory=asyncio.Lock)
    freed: asyncio.Condition = field(default_factory=asyncio.Condition)
    users: int = 0


class Attempt:
    """One admitted sign-in attempt: settle it as a success or a failure in its transaction."""

    def __init__(self, throttle: LoginThrottle, account: str, peer: str, *, counted: bool) -> None:
        self._throttle = throttle
        self.account = account
        self.peer = peer
        # Whether the account had a counter at admission: without one, a success has
        # nothing to clear (a failure racing in since is kept, the stricter outcome).
        self.counted = counted
        self.settled = False

    async def succeeded(self, uow: UnitOfWork) -> None:
        """Frees the slot and clears the account's failures and lock."""
        await self._throttle.settle(uow, self, ok=True)

    async def failed(self, uow: UnitOfWork) -> None:
        """Frees the slot and counts a failure against the account and the peer."""
        await self._throttle.settle(uow, self, ok=False)


class LoginThrottle:
    """Admits sign-in attempts per account so that no burst gets more than the limit judged.

    An attempt is admitted, under the row lock of the account's in-flight counter, only
    while the failures so far plus the attempts in flight stay below the limit; the rest
    wait for a slot (or are refused as locked). Wrong guesses racing can't outrun the
    lock, and right ones for one account (fifty workers of a machine account) queue
    instead of locking it. Peers are checked on admission and counted on failure, so a
    storm of good sign-ins from one address never queues on one row; a burst from one
    address may pass its peer limit by the attempts in flight.
    """

    def __init__(
        self,
        limits: LoginLimits,
        clock: Clock,
        uow: UnitOfWorkFactory,
        *,
        on_lockout: Callable[[str], None] | None = None,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._uow = uow
        # Called with a subject's scope ("user", "mfa", "peer") each time a lock starts.
        self._on_lockout = on_lockout
        # Waiters in this process, woken as a slot of their account frees; other replicas'
        # attempts free slots too, so waiters also look again every ADMIT_POLL_S.
        self._slots: dict[str, _Slot] = {}
        # Locks whose refusals this process has audited: a caller hammering a locked
        # account or address costs one audit row per lock, not one per call.
        self._refusals_audited: dict[tuple[str, datetime], None] = {}

    @asynccontextmanager
    async def attempt(
        self,
        account: str,
        username: str,
        peer: str,
        refused: AuditRecord,
        read: Callable[[UnitOfWork], Awaitable[T]],
    ) -> AsyncIterator[tuple[Attempt, T]]:
        """An admitted attempt on `account` (a subject) and what `read` read at admission.

        A locked account or peer appends `refused` to the audit trail and raises RateLimited.
        An attempt left unsettled (the caller gave up before judging) only frees its slot.
        """
        attempt, value = await self._admit(account, username, peer, refused, read)
        try:
            yield attempt, value
        finally:
            if not attempt.settled:
                async with self._uow() as uow:
                    await uow.throttle.release(busy_subject(account))
                    await uow.commit()
            await self._wake(account)

    async def _admit(
        self,
        account: str,
        username: str,
        peer: str,
        refused: AuditRecord,
        read: Callable[[UnitOfWork], Awaitable[T]],
    ) -> tuple[Attempt, T]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + ADMIT_WAIT_S
        slot = self._slots.setdefault(account, _Slot())
        slot.users += 1
        try:
            while True:
                # One admission per account at a time in this process: a burst queues here,
                # holding no connection, not on the database row with a connection each.
                # Pipelined: the slot's save goes with the read after it, BEGIN with the lock.
                async with slot.admitting, self._uow(pipelined=True) as uow:
                    admitted = await self._take_slot(uow, account, username, peer, refused)
                    if admitted is not None:
                        value = await read(uow)
                        await uow.commit()
                        return admitted, value
                    # No slot: the passage ends unchanged (rolled back), its row lock freed.
                if loop.time() >= give_up:
                    async with self._uow() as uow:
                        await uow.audit.append(refused)
                        await uow.commit()
                    raise RateLimited(BUSY, retry_after_s=1)
                try:
                    async with slot.freed, asyncio.timeout(ADMIT_POLL_S):
                        await slot.freed.wait()
                except TimeoutError:
                    pass
        finally:
            slot.users -= 1
            if not slot.users:
                self._slots.pop(account, None)

    async def _take_slot(
        self, uow: UnitOfWork, account: str, username: str, peer: str, refused: AuditRecord
    ) -> Attempt | None:
        """An attempt holding a slot of `account` (taken in `uow`), or None if none is free.

        Raises RateLimited (committing `refused` the first time) if the account or the peer
        is locked. Everything is read in one statement under the in-flight row's lock, so
        the failures and the attempts in flight are seen at one moment: a settle of this
        account waits for that lock, and one committed before shows in the read.
        """
        now = self._clock.now()
        scope = account.partition(":")[0]
        host = peer_subject(peer)
        busy, peeked = await uow.throttle.lock_and_peek(
            busy_subject(account), now, [account, host, trust_subject(username, peer)]
        )
        # Classified by prefix, not by equality: a stored subject may be its storable form.
        states: dict[str, ThrottleState] = {s.subject.partition(":")[0]: s for s in peeked}
        mine, at_host = states.get(scope), states.get("peer")
        locks = []
        if mine is not None and _wait(mine, now) > 0:
            assert mine.locked_until is not None
            locks.append((_wait(mine, now), (account, mine.locked_until)))
        if at_host is not None and _wait(at_host, now) > 0 and not self._trusted(states, now):
            assert at_host.locked_until is not None
            locks.append((_wait(at_host, now), (host, at_host.locked_until)))
        if locks:
            wait, lock = max(locks)
            if self._first_refusal(lock):
                await uow.audit.append(refused)
                await uow.commit()
            raise RateLimited(LOCKED, retry_after_s=math.ceil(wait))
        in_flight = busy.failures
        if in_flight and now - busy.window_started_at > BUSY_TTL:
            in_flight = 0  # left by a process that died mid-attempt
        failures = 0
        if mine is not None and now - mine.window_started_at < self.limits.window:
            failures = mine.failures
        if failures + in_flight >= self.limits.max_failures:
            return None
        await uow.throttle.save(replace(busy, failures=in_flight + 1, window_started_at=now))
        return Attempt(self, account, peer, counted=mine is not None)

    def _first_refusal(self, lock: tuple[str, datetime]) -> bool:
        """Whether this process has not yet audited a refusal by this lock (and now has)."""
        if lock in self._refusals_audited:
            return False
        now = self._clock.now()
        if len(self._refusals_audited) >= REFUSALS_REMEMBERED:
            # Forget locks that have ended; if every one is live, start over (more rows).
            live = {k: None for k in self._refusals_audited if k[1] > now}
            self._refusals_audited = live if len(live) < REFUSALS_REMEMBERED else {}
        self._refusals_audited[lock] = None
        return True

    async def _wake(self, account: str) -> None:
        slot = self._slots.get(account)
        if slot is not None:
            async with slot.freed:
                slot.freed.notify()

    async def settle(self, uow: UnitOfWork, attempt: Attempt, *, ok: bool) -> None:
        """Ends an attempt in the caller's transaction (see Attempt)."""
        now = self._clock.now()
        await uow.throttle.release(busy_subject(attempt.account))
        if ok:
            if attempt.counted:
                await uow.throttle.clear(attempt.account)
        else:
            for subject, limit in (
                (attempt.account, self.limits.max_failures),
                (peer_subject(attempt.peer), self.limits.max_failures_per_peer),
            ):
                state = await uow.throttle.lock(subject, now)
                after = after_failure(state, now, limit, self.limits)
                await uow.throttle.save(after)
                if after.locked_until != state.locked_until and self._on_lockout:
                    self._on_lockout(subject.partition(":")[0])
        attempt.settled = True

    def _trusted(self, states: dict[str, ThrottleState], now: datetime) -> bool:
        seen = states.get("seen")
        if self.limits.peer_trust <= timedelta(0) or seen is None:
            return False
        return now - seen.window_started_at < self.limits.peer_trust

    async def signed_in(self, uow: UnitOfWork, username: str, peer: str) -> None:
        """Remembers a full sign-in of this username from this peer (see LoginLimits.peer_trust)."""
        await uow.throttle.touch(trust_subject(username, peer), self._clock.now())


def _wait(state: ThrottleState, now: datetime) -> float:
    if state.locked_until is None or state.locked_until <= now:
        return 0.0
    return (state.locked_until - now).total_seconds()
