"""A typed async client for CANDI and dashboards: sign-in, refresh, resumable watches.

Only the generated contract, grpc and grpcio-status are imported, so the module can be vendored.

    async with HitlClient("hitl:50051", username="candi", password=secret) as hitl:
        await hitl.submit_decision(request)
        verdict = await hitl.wait_for_verdict(request.analysis_id)

    async for change in hitl.watch_pending():
        ...  # change.kind: "added" | "updated" | "removed" | "snapshot_complete" | "resync"
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final, Literal, Self, TypeVar

import grpc
from google.rpc import error_details_pb2
from google.rpc.error_details_pb2 import BadRequest
from grpc_status import rpc_status
from hitl.v1 import auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

log = logging.getLogger("hitl_grpc.client")

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]
# Asks the user (or a secret store) for a TOTP or backup code when login needs one.
MfaCode = Callable[[], Awaitable[str]]
ChangeKind = Literal["added", "updated", "removed", "snapshot_complete", "resync"]

# Worth another attempt: the server (or the path to it) is briefly unable to answer.
RETRYABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE})
# A watch also resumes after these: a replica drained (its calls end CANCELLED or
# UNAVAILABLE), this consumer fell behind, or a long stream hit its deadline.
WATCH_RETRYABLE: Final = RETRYABLE | {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
TERMINAL: Final = frozenset(
    {
        decision_pb2.DECISION_STATUS_APPROVED,
        decision_pb2.DECISION_STATUS_REJECTED,
        decision_pb2.DECISION_STATUS_EXPIRED,
    }
)
# Refresh this long before the access token expires.
REFRESH_MARGIN_S: Final = 30.0


class HitlClientError(Exception):
    """A call failed for good: the gRPC status with the server's google.rpc details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: Sequence[BadRequest.FieldViolation] = (),
        retry_delay_s: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        # google.rpc.BadRequest of an INVALID_ARGUMENT: every bad field, by name.
        self.field_violations = tuple(field_violations)
        # google.rpc.RetryInfo of a lockout: how long to wait before trying again.
        self.retry_delay_s = retry_delay_s


@dataclass(frozen=True)
class PendingChange:
    """One change to the pending queue as a dashboard applies it.

    "resync": the cursor was no longer retained; drop everything, a new snapshot follows.
    """

    kind: ChangeKind
    cursor: str
    decision: decision_pb2.Decision | None = None
    analysis_id: str = ""
    final_status: int = 0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, and how long to keep at it."""

    first_s: float = 0.1
    max_s: float = 5.0
    # Tries of one unary call.
    attempts: int = 6
    # How long a watch keeps resuming without receiving a message before it gives up.
    budget_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (from 0)."""
        return random.uniform(0, min(self.max_s, self.first_s * 2 ** min(attempt, 64)))


def _error(exc: grpc.aio.AioRpcError) -> HitlClientError:
    code, message = exc.code(), exc.details() or ""
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:
        status = None  # details that contradict the status line are not trusted
    violations: list[BadRequest.FieldViolation] = []
    retry_delay_s = None
    for detail in status.details if status is not None else ():
        bad, retry = BadRequest(), error_details_pb2.RetryInfo()
        if detail.Unpack(bad):
            violations.extend(bad.field_violations)
        elif detail.Unpack(retry):
            retry_delay_s = retry.retry_delay.ToMilliseconds() / 1000
    return HitlClientError(code, message, field_violations=violations, retry_delay_s=retry_delay_s)


class HitlClient:
    """One channel, one signed-in identity, a deadline on every call."""

    def __init__(
        self,
        address: str,
        *,
        username: str,
        password: str,
        mfa_code: MfaCode | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        stream_deadline_s: float = 3600.0,
    ) -> None:
        options = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Reconnect quickly after a server restart or failover.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        self._channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._auth = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._decisions = decision_pb2_grpc.DecisionServiceStub(self._channel)
        self._username = username
        self._password = password
        self._mfa_code = mfa_code
        self._timeout_s = timeout_s
        self._backoff = backoff or Backoff()
        self._stream_deadline_s = stream_deadline_s
        self._tokens: auth_pb2.TokenPair | None = None
        self._signing_in = asyncio.Lock()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; open watches end."""
        self._closed = True
        await self._channel.close(None)

    # -- signing in ---------------------------------------------------------------------

    async def login(self) -> None:
        """Signs in (answering an MFA challenge through `mfa_code`)."""
        reply = await self._retrying(
            lambda: self._auth.Login(
                auth_pb2.LoginRequest(username=self._username, password=self._password),
                timeout=self._timeout_s,
            )
        )
        if reply.HasField("mfa_challenge"):
            if self._mfa_code is None:
                raise HitlClientError(
                    grpc.StatusCode.UNAUTHENTICATED, "account requires MFA: pass mfa_code"
                )
            code = await self._mfa_code()
            verified = await self._retrying(
                lambda: self._auth.VerifyMfa(
                    auth_pb2.VerifyMfaRequest(
                        challenge_token=reply.mfa_challenge.challenge_token, code=code
                    ),
                    timeout=self._timeout_s,
                )
            )
            self._tokens = verified.tokens
        else:
            self._tokens = reply.tokens

    async def _refresh(self) -> None:
        """Rotates the refresh token, once: a rotation is never retried.

        If the reply is lost the server has already rotated; sending the same token again
        would look like a stolen token being replayed and revoke the whole session. So on
        any failure the pair is dropped and the client signs in anew, whose own errors
        (deactivated, locked out) are the ones the caller sees.
        """
        assert self._tokens is not None
        request = auth_pb2.RefreshTokenRequest(refresh_token=self._tokens.refresh_token)
        try:
            reply = await self._auth.RefreshToken(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            self._tokens = None
            if exc.code() is not grpc.StatusCode.UNAUTHENTICATED:  # not a plain expiry
                log.warning("refresh failed with %s; signing in again", exc.code().name)
            await self.login()
            return
        self._tokens = reply.tokens

    def _bearer(self) -> Metadata:
        assert self._tokens is not None
        return (("authorization", f"Bearer {self._tokens.access_token}"),)

    async def _metadata(self, *, rejected: Metadata | None = None) -> Metadata:
        """Credentials for a call; `rejected` is what the server just refused as expired."""
        async with self._signing_in:
            if self._tokens is None:
                await self.login()
            elif rejected is not None and rejected == self._bearer():
                # Only the first of several calls refused together renews the token.
                await self._refresh()
            else:
                expires = self._tokens.access_expires_at.seconds
                if expires and expires - time.time() < REFRESH_MARGIN_S:
                    await self._refresh()
            return self._bearer()

    @property
    def tokens(self) -> auth_pb2.TokenPair | None:
        """The current token pair, if signed in."""
        return self._tokens

    # -- calls --------------------------------------------------------------------------

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(self._backoff.attempts):
            try:
                return await call()
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in RETRYABLE or attempt == self._backoff.attempts - 1:
                    raise _error(exc) from None
                await asyncio.sleep(self._backoff.delay(attempt))
        raise AssertionError("unreachable")

    async def _call(self, invoke: Callable[[Metadata], Awaitable[T]]) -> T:
        """A unary call, signed in, refreshed once on UNAUTHENTICATED."""
        metadata = await self._metadata()
        try:
            return await self._retrying(lambda: invoke(metadata))
        except HitlClientError as exc:
            if exc.code is not grpc.StatusCode.UNAUTHENTICATED:
                raise
        metadata = await self._metadata(rejected=metadata)
        return await self._retrying(lambda: invoke(metadata))

    async def submit_decision(
        self, request: decision_pb2.SubmitDecisionRequest
    ) -> decision_pb2.SubmitDecisionResponse:
        """Queues an analysis for a human; safe to repeat (idempotent on analysis_id)."""
        return await self._call(
            lambda md: self._decisions.SubmitDecision(request, metadata=md, timeout=self._timeout_s)
        )

    async def get_decision(self, analysis_id: str) -> decision_pb2.Decision:
        """A decision's current state."""
        reply = await self._call(
            lambda md: self._decisions.GetDecision(
                decision_pb2.GetDecisionRequest(analysis_id=analysis_id),
                metadata=md,
                timeout=self._timeout_s,
            )
        )
        return reply.decision

    # -- watching -----------------------------------------------------------------------

    async def _resuming(
        self, open_call: Callable[[Metadata], grpc.aio.UnaryStreamCall[Any, T]]
    ) -> AsyncGenerator[T, None]:
        """A stream's messages, reopened through drains, restarts and token expiry.

        `open_call` builds the request afresh each time, from the caller's last cursor.
        CANCELLED, UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and a clean end are
        resumed with backoff until `Backoff.budget_s` passes without a message;
        UNAUTHENTICATED renews the token once. Anything else is raised.
        """
        attempt = 0
        outage_since: float | None = None
        renewed = False
        while True:
            metadata: Metadata | None = None
            failure: HitlClientError | None = None
            try:
                metadata = await self._metadata()
                call = open_call(metadata)
                try:
                    async for message in call:
                        attempt, outage_since, renewed = 0, None, False
                        yield message
                finally:
                    call.cancel()
            except grpc.aio.AioRpcError as exc:
                failure = _error(exc)
            except HitlClientError as exc:
                failure = exc  # signing in failed, e.g. while the server restarts
            if failure is not None and failure.code is grpc.StatusCode.UNAUTHENTICATED:
                if renewed or metadata is None:
                    raise failure
                renewed = True
                try:
                    await self._metadata(rejected=metadata)
                    continue
                except HitlClientError as exc:
                    failure = exc  # renewing failed too; resume or raise by its code
            if self._closed or (failure is not None and failure.code not in WATCH_RETRYABLE):
                raise failure or HitlClientError(grpc.StatusCode.CANCELLED, "client closed")
            now = time.monotonic()
            outage_since = now if outage_since is None else outage_since
            left = self._backoff.budget_s - (now - outage_since)
            if left <= 0:
                raise failure or HitlClientError(
                    grpc.StatusCode.UNAVAILABLE, "the stream kept ending without a message"
                )
            log.info("watch interrupted (%s); resuming", failure.code.name if failure else "end")
            await asyncio.sleep(min(self._backoff.delay(attempt), left))
            attempt += 1

    async def watch_pending(
        self,
        priorities: Iterable[decision_pb2.Priority.ValueType] = (),
        *,
        cursor: str = "",
    ) -> AsyncIterator[PendingChange]:
        """The pending queue, forever: a snapshot, then every change, across reconnects.

        Resumes from the last cursor (no gap, no duplicate) after a drain or restart
        (CANCELLED, UNAVAILABLE), after RESOURCE_EXHAUSTED (this consumer fell behind) and
        at each stream deadline, for up to `Backoff.budget_s` without a message; renews the
        token once on UNAUTHENTICATED. After OUT_OF_RANGE it yields a "resync" and starts
        over with a snapshot. Anything else is raised as HitlClientError.
        """
        wanted: Sequence[decision_pb2.Priority.ValueType] = list(priorities)
        state = {"cursor": cursor}

        def open_call(
            md: Metadata,
        ) -> grpc.aio.UnaryStreamCall[Any, decision_pb2.WatchPendingResponse]:
            request = decision_pb2.WatchPendingRequest(
                priorities=wanted, resume_cursor=state["cursor"]
            )
            return self._decisions.WatchPending(
                request, metadata=md, timeout=self._stream_deadline_s
            )

        while True:
            try:
                async with aclosing(self._resuming(open_call)) as messages:
                    async for message in messages:
                        state["cursor"] = message.cursor
                        change = _change(message)
                        if change is not None:
                            yield change
            except HitlClientError as exc:
                if exc.code is not grpc.StatusCode.OUT_OF_RANGE:
                    raise
                state["cursor"] = ""
                yield PendingChange("resync", "")

    async def wait_for_verdict(
        self, analysis_id: str, *, timeout_s: float | None = None
    ) -> decision_pb2.Decision:
        """Blocks until the decision reaches a terminal state and returns it (one call)."""
        request = decision_pb2.WatchDecisionRequest(analysis_id=analysis_id)

        def open_call(
            md: Metadata,
        ) -> grpc.aio.UnaryStreamCall[Any, decision_pb2.WatchDecisionResponse]:
            return self._decisions.WatchDecision(
                request, metadata=md, timeout=self._stream_deadline_s
            )

        async def wait() -> decision_pb2.Decision:
            async with aclosing(self._resuming(open_call)) as messages:
                async for message in messages:
                    if message.decision.status in TERMINAL:
                        return message.decision
            raise AssertionError("unreachable: _resuming only ends by raising")

        async with asyncio.timeout(timeout_s):
            return await wait()


def _change(message: decision_pb2.WatchPendingResponse) -> PendingChange | None:
    kind = message.WhichOneof("event")
    if kind == "added":
        return PendingChange("added", message.cursor, message.added)
    if kind == "updated":
        return PendingChange("updated", message.cursor, message.updated)
    if kind == "removed":
        return PendingChange(
            "removed",
            message.cursor,
            analysis_id=message.removed.analysis_id,
            final_status=message.removed.final_status,
        )
    if kind == "snapshot_complete":
        return PendingChange("snapshot_complete", message.cursor)
    return None  # heartbeats only move the cursor
