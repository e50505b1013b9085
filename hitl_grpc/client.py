"""A typed async client for CANDI and dashboards: sign-in, refresh, resumable watches.

Only the generated contract and grpc are imported, so the module can be vendored.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Self, TypeVar

import grpc
from hitl.v1 import auth_pb2, auth_pb2_grpc, decision_pb2, decision_pb2_grpc

log = logging.getLogger("hitl_grpc.client")

T = TypeVar("T")
# Asks the user (or a secret store) for a TOTP or backup code when login needs one.
MfaCode = Callable[[], Awaitable[str]]
ChangeKind = Literal["added", "updated", "removed", "snapshot_complete", "resync"]

# Worth another attempt: the server (or the path to it) is briefly unable to answer.
RETRYABLE: Final = frozenset({grpc.StatusCode.UNAVAILABLE})
# A watch may also resume after these: it fell behind, or a long stream hit its deadline.
WATCH_RETRYABLE: Final = RETRYABLE | {
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
    """A call failed for good; `code` is the gRPC status."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


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
    """Exponential backoff with full jitter."""

    first_s: float = 0.1
    max_s: float = 5.0
    attempts: int = 6

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (from 0)."""
        return random.uniform(0, min(self.max_s, self.first_s * 2**attempt))


def _error(exc: grpc.aio.AioRpcError) -> HitlClientError:
    return HitlClientError(exc.code(), exc.details() or "")


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

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; open watches end."""
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
        assert self._tokens is not None
        try:
            reply = await self._retrying(
                lambda: self._auth.RefreshToken(
                    auth_pb2.RefreshTokenRequest(refresh_token=self._tokens.refresh_token),  # type: ignore[union-attr]
                    timeout=self._timeout_s,
                )
            )
            self._tokens = reply.tokens
        except HitlClientError as exc:
            if exc.code is not grpc.StatusCode.UNAUTHENTICATED:
                raise
            await self.login()  # the refresh token expired or was revoked

    async def _metadata(self, *, force_refresh: bool = False) -> tuple[tuple[str, str], ...]:
        async with self._signing_in:
            if self._tokens is None:
                await self.login()
            else:
                expires = self._tokens.access_expires_at.seconds
                if force_refresh or (expires and expires - time.time() < REFRESH_MARGIN_S):
                    await self._refresh()
            assert self._tokens is not None
            return (("authorization", f"Bearer {self._tokens.access_token}"),)

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

    async def _call(self, invoke: Callable[[tuple[tuple[str, str], ...]], Awaitable[T]]) -> T:
        """A unary call, signed in, refreshed once on UNAUTHENTICATED."""
        metadata = await self._metadata()
        try:
            return await self._retrying(lambda: invoke(metadata))
        except HitlClientError as exc:
            if exc.code is not grpc.StatusCode.UNAUTHENTICATED:
                raise
        metadata = await self._metadata(force_refresh=True)
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

    async def _stream(
        self,
        open_call: Callable[[tuple[tuple[str, str], ...]], Any],
        on_message: Callable[[Any], None],
    ) -> AsyncIterator[Any]:
        """Messages of one stream call; refreshes and reopens on UNAUTHENTICATED once."""
        metadata = await self._metadata()
        call = open_call(metadata)
        try:
            async for message in call:
                on_message(message)
                yield message
        finally:
            call.cancel()

    async def watch_pending(
        self,
        priorities: Iterable[decision_pb2.Priority.ValueType] = (),
        *,
        cursor: str = "",
    ) -> AsyncIterator[PendingChange]:
        """The pending queue, forever: a snapshot, then every change, across reconnects.

        Resumes from the last cursor after UNAVAILABLE (a restart, a failover), after
        RESOURCE_EXHAUSTED (this consumer fell behind) and at each stream deadline; after
        OUT_OF_RANGE it yields a "resync" and starts over with a snapshot.
        """
        wanted: Sequence[decision_pb2.Priority.ValueType] = list(priorities)
        attempt = 0
        state = {"cursor": cursor}

        def remember(message: decision_pb2.WatchPendingResponse) -> None:
            state["cursor"] = message.cursor

        while True:
            request = decision_pb2.WatchPendingRequest(
                priorities=wanted, resume_cursor=state["cursor"]
            )
            try:
                async for message in self._stream(
                    lambda md, r=request: self._decisions.WatchPending(  # type: ignore[misc]
                        r, metadata=md, timeout=self._stream_deadline_s, wait_for_ready=True
                    ),
                    remember,
                ):
                    attempt = 0
                    change = _change(message)
                    if change is not None:
                        yield change
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code is grpc.StatusCode.OUT_OF_RANGE:
                    state["cursor"] = ""
                    yield PendingChange("resync", "")
                    continue
                if code is grpc.StatusCode.UNAUTHENTICATED and attempt == 0:
                    await self._metadata(force_refresh=True)
                    attempt += 1
                    continue
                if code not in WATCH_RETRYABLE or attempt >= self._backoff.attempts:
                    raise _error(exc) from None
                log.info("watch interrupted (%s); resuming", code.name)
                await asyncio.sleep(self._backoff.delay(attempt))
                attempt += 1

    async def wait_for_verdict(
        self, analysis_id: str, *, timeout_s: float | None = None
    ) -> decision_pb2.Decision:
        """Blocks until the decision reaches a terminal state and returns it (one call)."""

        async def wait() -> decision_pb2.Decision:
            attempt = 0
            last: decision_pb2.Decision | None = None
            while True:
                request = decision_pb2.WatchDecisionRequest(analysis_id=analysis_id)
                try:
                    async for message in self._stream(
                        lambda md, r=request: self._decisions.WatchDecision(  # type: ignore[misc]
                            r,
                            metadata=md,
                            timeout=self._stream_deadline_s,
                            wait_for_ready=True,
                        ),
                        lambda _m: None,
                    ):
                        attempt = 0
                        last = message.decision
                        if last.status in TERMINAL:
                            return last
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    if code is grpc.StatusCode.UNAUTHENTICATED and attempt == 0:
                        await self._metadata(force_refresh=True)
                    elif code not in WATCH_RETRYABLE or attempt >= self._backoff.attempts:
                        raise _error(exc) from None
                    else:
                        await asyncio.sleep(self._backoff.delay(attempt))
                    attempt += 1
                    continue
                if last is not None and last.status in TERMINAL:
                    return last

        if timeout_s is None:
            return await wait()
        return await asyncio.wait_for(wait(), timeout_s)


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
