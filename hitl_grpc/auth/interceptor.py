"""The auth interceptor: authenticate the caller, authorize from the contract's policy.

The caller is a bearer token's, or, on a listener that requires client certificates and
without a token, the SERVICE account bound to the verified certificate's subject.

A server stream is authorized for as long as it is open, not only when it opens: it re-checks
its caller's access every `reauth_s`, before any message when the last check is older than
that, and ends at its access token's expiry on a timer. Streams of one credential share
their re-checks: one read started once a stream's check is due answers for it.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import grpc
from cryptography import x509

from hitl_grpc.auth import principal as principal_ctx
from hitl_grpc.auth.policy import Policy, policy_for
from hitl_grpc.auth.principal import Access
from hitl_grpc.domain.errors import PermissionDenied, Unauthenticated
from hitl_grpc.domain.values import AccountCheck, Role

Authenticate = Callable[[str, str], Awaitable[Access]]
# A token's check left to the call's own statement (and the token's life), or None.
Defer = Callable[[str, str, frozenset[Role], str], tuple[AccountCheck, float] | None]
Admit = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]
OpenStream = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable["StreamAccess"]]


@dataclass(frozen=True)
class ClientCertificate:
    """A client certificate the TLS handshake verified against HITL_TLS_CLIENT_CA_FILE."""

    subject: str
    expires_at: datetime


AuthenticateCertificate = Callable[[str, datetime, str], Awaitable[Access]]

TOKEN_EXPIRED: Final = "token expired: sign in again"
# A verdict stream carries a handful of messages and its last one is the verdict a machine
# acts on: each message is checked like a unary GetDecision would be.
CHECK_EVERY_MESSAGE: Final = frozenset({"/hitl.v1.DecisionService/WatchDecision"})
# Re-checks fall due on a grid of this fraction of the interval, so the streams of one
# credential due within one step wake together and share a read; a check comes at most
# one step early, never late.
GRID_STEPS: Final = 8
# Checks a stream's access, with a read started no earlier than the given loop time;
# returns the loop time that read started.
Recheck = Callable[[float], Awaitable[float]]


def bearer_token(metadata: Any) -> str:
    """The token from `authorization: Bearer <token>`; anything else is Unauthenticated."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return token.strip()
    raise Unauthenticated("authentication required: send 'authorization: Bearer <token>'")


def client_certificate(auth_context: Mapping[str, Any]) -> ClientCertificate | None:
    """The verified client certificate of the connection, if it presented one.

    grpc sets these properties only once the handshake has verified the chain, which a
    listener without a client CA never asks for.
    """
    subjects = auth_context.get("x509_subject") or ()
    pems = auth_context.get("x509_pem_cert") or ()
    if not subjects or not pems:
        return None
    certificate = x509.load_pem_x509_certificate(bytes(pems[0]))
    return ClientCertificate(bytes(subjects[0]).decode(), certificate.not_valid_after_utc)


class SharedChecks:
    """The access checks in flight for open streams, one per credential.

    A stream whose check fell due at some moment may take the answer of any read that
    started at or after it: that read sees the account at least as late as the stream's
    own would have. So a thousand dashboards of one service account, due together, cost
    one read instead of a thousand. A check is shared only while it is in flight.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, tuple[float, asyncio.Future[Access]]] = {}

    async def check(
        self, key: Hashable, since: float, run: Callable[[], Awaitable[Access]]
    ) -> float:
        """Raises why `key`'s access ended, by a read started at or after `since`; returns
        the loop time that read started."""
        while (found := self._running.get(key)) is not None and found[0] >= since:
            started, shared = found
            try:
                await asyncio.shield(shared)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if shared.cancelled() and (task is None or not task.cancelling()):
                    continue  # the stream that read went away mid-read: read again
                raise
            return started
        loop = asyncio.get_running_loop()
        started = loop.time()
        future: asyncio.Future[Access] = loop.create_future()
        self._running[key] = (started, future)
        try:
            future.set_result(await run())
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a failure nobody joined is not "never retrieved"
            raise
        finally:
            if self._running.get(key, (0.0, None))[1] is future:
                del self._running[key]
        return started


class StreamAccess:
    """Keeps one open stream's access checked; cancels the stream's task when it ends.

    The watchdog cancels rather than waits, so a stream blocked on its next event ends at
    once; the stream turns that cancellation back into the status of why access ended.
    """

    def __init__(
        self,
        check: Recheck,
        first: Access,
        reauth_s: float,
        *,
        every_message: bool = False,
    ):
        loop = asyncio.get_running_loop()
        self._check = check
        self._reauth_s = reauth_s
        self._grid_s = reauth_s / GRID_STEPS
        self._every_message = every_message
        self._checked_at = loop.time()
        self._expires_at = self._checked_at + first.expires_in_s
        self._task = asyncio.current_task()
        self.ended: Exception | None = None
        self._watchdog = asyncio.create_task(self._watch(), name="stream-reauth")

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = loop.time()
                if now >= self._expires_at:
                    raise Unauthenticated(TOKEN_EXPIRED)
                due = self._due()
                if now >= due:
                    await self._recheck(due)
                    continue
                await asyncio.sleep(min(due, self._expires_at) - now)
        except Exception as exc:
            self.ended = exc
            if self._task is not None:
                self._task.cancel()

    def _due(self) -> float:
        """When the next check falls due: on the grid, at most one step before reauth_s."""
        return math.floor((self._checked_at + self._reauth_s) / self._grid_s) * self._grid_s

    async def _recheck(self, since: float) -> None:
        started = await self._check(since)
        self._checked_at = max(self._checked_at, started)

    async def recheck(self) -> None:
        """Checks the caller's access again, by a read started once the check fell due."""
        await self._recheck(min(self._due(), asyncio.get_running_loop().time()))

    def due_before_delivery(self) -> bool:
        """Raises why access ended; True if a fresh check must come first (the last is older
        than reauth_s). Not a coroutine: it runs for every message of every watcher."""
        if self.ended is not None:
            raise self.ended
        now = asyncio.get_running_loop().time()
        if now >= self._expires_at:
            raise Unauthenticated(TOKEN_EXPIRED)
        return self._every_message or now >= self._due()

    def cancelled_by_us(self) -> Exception | None:
        """Why access ended, if that is what cancelled the stream (the cancel is undone)."""
        if self.ended is None or self._task is None:
            return None
        self._task.uncancel()
        return self.ended

    def close(self) -> None:
        """Stops the watchdog."""
        self._watchdog.cancel()


class AuthInterceptor:
    """Denies any method without a policy; binds the caller for the servicer (run by the one
    layer around every call, runtime/calls.py)."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        authenticate: Authenticate,
        *,
        reauth_s: float,
        authenticate_certificate: AuthenticateCertificate | None = None,
        defer: Defer | None = None,
        folded: frozenset[str] = frozenset(),
    ) -> None:
        self._policies = policies
        self._authenticate = authenticate
        self._authenticate_certificate = authenticate_certificate
        self._reauth_s = reauth_s
        # Methods whose servicer makes the access check in its own statement.
        self._defer = defer
        self._folded = folded if defer is not None else frozenset()

    def _credential(self, context: grpc.aio.ServicerContext[Any, Any]) -> str | ClientCertificate:
        """A bearer token if the call carries one, else a verified client certificate."""
        metadata = context.invocation_metadata()
        if self._authenticate_certificate is not None and not any(
            key == "authorization" for key, _ in metadata or ()
        ):
            certificate = client_certificate(context.auth_context())
            if certificate is not None:
                return certificate
        return bearer_token(metadata)

    async def _admit(
        self, credential: str | ClientCertificate, peer: str, method: str, policy: Policy
    ) -> Access:
        if isinstance(credential, ClientCertificate):
            assert self._authenticate_certificate is not None
            access = await self._authenticate_certificate(
                credential.subject, credential.expires_at, peer
            )
        else:
            access = await self._authenticate(credential, peer)
        if access.principal.role not in policy.roles:
            raise PermissionDenied(f"role {access.principal.role.name} may not call {method}")
        return access

    def admission_for(self, method: str) -> Admit:
        """Authenticates and authorizes each call of `method` by its policy."""
        policy = policy_for(method, self._policies)

        async def admit(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            peer = context.peer() or ""
            if policy is None:
                raise PermissionDenied("method has no access policy")
            if policy.public:
                principal_ctx.bind(None, peer)
            else:
                credential = self._credential(context)
                deferred = None
                if method in self._folded and isinstance(credential, str):
                    assert self._defer is not None
                    deferred = self._defer(credential, peer, policy.roles, method)
                if deferred is not None:
                    if deferred[1] <= 0:
                        raise Unauthenticated(TOKEN_EXPIRED)
                    principal_ctx.bind_deferred(deferred[0], peer)
                else:
                    access = await self._admit(credential, peer, method, policy)
                    principal_ctx.bind(access.principal, peer, access.user)

        return admit

    def stream_admission_for(self, method: str) -> OpenStream | None:
        """For a server stream that needs a caller: admits each call of `method` and keeps its
        access checked while it is open (None for a public or policy-less method)."""
        policy = policy_for(method, self._policies)
        if policy is None or policy.public:
            return None
        every_message = method in CHECK_EVERY_MESSAGE
        shared = SharedChecks()

        # The watchdog's cancel lands in the call's own task (even in a blocked write), where
        # the caller of StreamAccess turns it into the status of why access ended.
        async def open_stream(context: grpc.aio.ServicerContext[Any, Any]) -> StreamAccess:
            peer = context.peer() or ""
            credential = self._credential(context)
            access = await self._admit(credential, peer, method, policy)
            principal_ctx.bind(access.principal, peer)

            def recheck(since: float) -> Awaitable[float]:
                run = functools.partial(self._admit, credential, peer, method, policy)
                return shared.check((credential, peer), since, run)

            return StreamAccess(
                recheck,
                access,
                self._reauth_s,
                every_message=every_message,
            )

        return open_stream
