"""A typed async client for CANDI and dashboards: sign-in, refresh, calls, resumable watches.

Only the generated contract, grpc and grpcio-status are imported, so the module can be vendored.

    async with HitlClient("hitl:50051", username="candi", password=secret) as hitl:
        await hitl.submit_decision(request)
        verdict = await hitl.wait_for_verdict(request.analysis_id)

    async with HitlClient("hitl:50051", username="ana", password=secret) as hitl:
        async for decision in hitl.list_pending([decision_pb2.PRIORITY_CRITICAL]):
            ...
        claimed = await hitl.claim_decision(analysis_id)
        await hitl.approve(analysis_id, actions, expected_version=claimed.version)
        async for change in hitl.watch_pending():
            ...  # change.kind: "added" | "updated" | "removed" | "snapshot_complete" | "resync"
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager, aclosing
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, Self, TypeVar

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from google.rpc.error_details_pb2 import BadRequest, RetryInfo
from grpc_status import rpc_status
from hitl.v1 import (
    access_pb2,
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    decision_pb2,
    decision_pb2_grpc,
)

log = logging.getLogger("hitl_grpc.client")

T = TypeVar("T")
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
M = TypeVar("M", bound=Message)
Metadata = tuple[tuple[str, str], ...]
# Asks the user (or a secret store) for a TOTP or backup code when login needs one.
MfaCode = Callable[[], Awaitable[str]]
ChangeKind = Literal["added", "updated", "removed", "snapshot_complete", "resync"]

# The calls grpc itself repeats on UNAVAILABLE (the server, or the path to it, briefly
# unable to answer): repeating them changes nothing. Never RefreshToken (a repeat of a
# rotated token looks like a stolen one and revokes the session), nor VerifyMfa (a backup
# code is single use), nor a transition (claim, release, make, escalate): after a lost
# reply the repeat would fail as already done and hide the success.
RETRIED_METHODS: Final = (
    ("hitl.v1.AuthService", "Login"),
    ("hitl.v1.DecisionService", "SubmitDecision"),
    ("hitl.v1.DecisionService", "GetDecision"),
    ("hitl.v1.DecisionService", "ListPendingDecisions"),
    ("hitl.v1.DecisionService", "GetDecisionStats"),
)
# grpc caps a retry policy at five attempts.
MAX_ATTEMPTS: Final = 5
# A watch resumes after these: a replica drained (its calls end CANCELLED or
# UNAVAILABLE), this consumer fell behind, or a long stream hit its deadline.
WATCH_RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
TERMINAL: Final = frozenset(
    {
        decision_pb2.DECISION_STATUS_APPROVED,
        decision_pb2.DECISION_STATUS_REJECTED,
        decision_pb2.DECISION_STATUS_EXPIRED,
    }
)
# Refresh this long before the access token expires.
REFRESH_MARGIN_S: Final = 30.0
# The google.rpc detail types a status may carry, by their full name.
DETAIL_TYPES: Final[dict[str, type[Message]]] = {
    kind.DESCRIPTOR.full_name: kind
    for kind in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.DebugInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.BadRequest,
        error_details_pb2.RequestInfo,
        error_details_pb2.ResourceInfo,
        error_details_pb2.Help,
        error_details_pb2.LocalizedMessage,
    )
}


class HitlClientError(Exception):
    """A call failed for good: its gRPC status code, message and google.rpc details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        details: Sequence[Message] = (),
        status: status_pb2.Status | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        # Each detail unpacked to its google.rpc type (BadRequest, RetryInfo, ...); a type
        # this module does not know stays a google.protobuf.Any.
        self.details = tuple(details)
        # The google.rpc.Status as the server sent it, when it sent one.
        self.status = status

    def detail(self, kind: type[M]) -> M | None:
        """The first detail of that type, if the status carries one."""
        return next((d for d in self.details if isinstance(d, kind)), None)

    @property
    def field_violations(self) -> tuple[BadRequest.FieldViolation, ...]:
        """google.rpc.BadRequest of an INVALID_ARGUMENT: every bad field, by name."""
        return tuple(
            v for d in self.details if isinstance(d, BadRequest) for v in d.field_violations
        )

    @property
    def retry_delay_s(self) -> float | None:
        """google.rpc.RetryInfo of a lockout: how long to wait before trying again."""
        retry = self.detail(RetryInfo)
        return None if retry is None else retry.retry_delay.ToMilliseconds() / 1000


class TokenStore(Protocol):
    """Where a session's token pair is kept across processes, e.g. a file in the user's home.

    Refresh tokens rotate and the server revokes the whole session when a rotated one comes
    back: so the client reads the pair afresh before renewing it (another process may have
    rotated it since), renews only while holding `exclusive()`, and saves each new pair.
    """

    def load(self) -> auth_pb2.TokenPair | None:
        """The pair kept now, if any."""

    def save(self, tokens: auth_pb2.TokenPair) -> None:
        """Keeps a new pair (sign-in or rotation)."""

    def exclusive(self) -> AbstractContextManager[object]:
        """Held while the pair is read and renewed: one renewal at a time."""


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
    """Exponential backoff with jitter, and how long to keep at it."""

    first_s: float = 0.1
    max_s: float = 5.0
    # Tries of one retried unary call (grpc's retry policy), all within the call's deadline.
    attempts: int = MAX_ATTEMPTS
    # How long a watch keeps resuming without receiving a message before it gives up.
    budget_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError(f"need 0 < first_s <= max_s, got {self.first_s}, {self.max_s}")
        if not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ValueError(f"attempts must be 1-{MAX_ATTEMPTS} (grpc's cap), got {self.attempts}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (from 0)."""
        return random.uniform(0, min(self.max_s, self.first_s * 2 ** min(attempt, 64)))

    def service_config(self) -> str:
        """grpc's service config (JSON): RETRIED_METHODS retried on UNAVAILABLE."""
        if self.attempts == 1:
            return json.dumps({})
        policy = {
            "maxAttempts": self.attempts,
            "initialBackoff": f"{self.first_s:.3f}s",
            "maxBackoff": f"{self.max_s:.3f}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
        names = [{"service": service, "method": method} for service, method in RETRIED_METHODS]
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


class _Deadline:
    """One call's deadline, shared by its attempts and the sign-in or refresh it needs."""

    def __init__(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; raises DEADLINE_EXCEEDED once there are none."""
        left = self._at - time.monotonic()
        if left <= 0:
            raise HitlClientError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        return left

    async def pausing(self, wait: Awaitable[T]) -> T:
        """Awaits something outside the call's control (a person typing a code), uncounted."""
        started = time.monotonic()
        try:
            return await wait
        finally:
            self._at += time.monotonic() - started


def _unpacked(detail: any_pb2.Any) -> Message:
    kind = DETAIL_TYPES.get(detail.TypeName())
    if kind is None:
        return detail
    message = kind()
    detail.Unpack(message)
    return message


def _error(exc: grpc.aio.AioRpcError) -> HitlClientError:
    code, message = exc.code(), exc.details() or ""
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:
        status = None  # details that contradict the status line are not trusted
    details = [_unpacked(d) for d in status.details] if status is not None else []
    return HitlClientError(code, message, details=details, status=status)


def action_hash(action: decision_pb2.Action) -> str:
    """The hex SHA-256 the service records for an action: over its canonical type and target.

    The text hashed is {"target":<target>,"type":"ACTION_TYPE_<NAME>"}: keys sorted, no
    spaces, UTF-8, non-ASCII not escaped.
    """
    canonical = {"type": decision_pb2.ActionType.Name(action.type), "target": action.target}
    encoded = json.dumps(canonical, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()


def executable_actions(decision: decision_pb2.Decision) -> list[decision_pb2.Action]:
    """The actions CANDI may run: those of an APPROVED decision whose verdict is APPROVED
    and whose hash, computed here, is the one recorded. Raises ValueError on a mismatch."""
    if decision.status != decision_pb2.DECISION_STATUS_APPROVED:
        return []
    if not decision.action_verdicts:  # a decision from before per-action verdicts
        return list(decision.resolution.approved_actions)
    actions = []
    for verdict in decision.action_verdicts:
        if verdict.status != decision_pb2.ACTION_VERDICT_STATUS_APPROVED:
            continue
        index = verdict.recommended_index
        action = verdict.action if index < 0 else decision.recommended_actions[index]
        if action.type != verdict.type or action_hash(action) != verdict.action_hash:
            raise ValueError(
                f"decision {decision.analysis_id}: the approved "
                f"{decision_pb2.ActionType.Name(verdict.type)} does not match its recorded hash"
            )
        actions.append(action)
    return actions


def _expected(version: int | None, lease_epoch: int | None = None) -> dict[str, int]:
    fields = {} if version is None else {"expected_version": version}
    if lease_epoch is not None:
        fields["lease_epoch"] = lease_epoch
    return fields


class HitlClient:
    """One channel, one signed-in identity, one deadline on every call.

    Signs in with `username` and `password`, or carries on the session kept in `store`
    (see TokenStore): with no password, a refresh token the server no longer accepts ends
    the session with UNAUTHENTICATED instead of signing in anew.
    """

    def __init__(
        self,
        address: str,
        *,
        username: str = "",
        password: str = "",
        store: TokenStore | None = None,
        mfa_code: MfaCode | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str = "",
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        stream_deadline_s: float = 3600.0,
    ) -> None:
        self._backoff = backoff or Backoff()
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # Reconnect quickly after a server restart or failover.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", self._backoff.service_config()),
            # The retry policy is the client's: a resolver's (DNS TXT) config does not replace it.
            ("grpc.service_config_disable_resolution", 1),
        ]
        if server_name:  # the name the server's certificate carries, if not the address's
            options.append(("grpc.ssl_target_name_override", server_name))
        self._channel = (
            grpc.aio.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(address, options=options)
        )
        self._auth = auth_pb2_grpc.AuthServiceStub(self._channel)
        self._decisions = decision_pb2_grpc.DecisionServiceStub(self._channel)
        self._audit = audit_pb2_grpc.AuditServiceStub(self._channel)
        self._username = username
        self._password = password
        self._mfa_code = mfa_code
        self._timeout_s = timeout_s
        self._stream_deadline_s = stream_deadline_s
        self._tokens: auth_pb2.TokenPair | None = None
        self._store = store
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
        """Signs in (answering an MFA challenge through `mfa_code`) within one deadline."""
        await self._login(_Deadline(self._timeout_s))

    async def _login(self, deadline: _Deadline) -> None:
        if not self._password:
            raise HitlClientError(grpc.StatusCode.UNAUTHENTICATED, "not signed in")
        request = auth_pb2.LoginRequest(username=self._username, password=self._password)
        reply = await self._unary(self._auth.Login, request, deadline)
        if reply.HasField("mfa_challenge"):
            if self._mfa_code is None:
                raise HitlClientError(
                    grpc.StatusCode.UNAUTHENTICATED, "account requires MFA: pass mfa_code"
                )
            code = await deadline.pausing(self._mfa_code())
            verify = auth_pb2.VerifyMfaRequest(
                challenge_token=reply.mfa_challenge.challenge_token, code=code
            )
            self._set_tokens((await self._unary(self._auth.VerifyMfa, verify, deadline)).tokens)
        else:
            self._set_tokens(reply.tokens)

    def _set_tokens(self, tokens: auth_pb2.TokenPair) -> None:
        self._tokens = tokens
        if self._store is not None:
            self._store.save(tokens)

    async def _refresh(self, deadline: _Deadline) -> None:
        """Rotates the refresh token, once: a rotation is never retried.

        If the reply is lost the server has already rotated; sending the same token again
        would look like a stolen token being replayed and revoke the whole session. So on
        any failure the pair is dropped and the client signs in anew, whose own errors
        (deactivated, locked out) are the ones the caller sees.
        """
        assert self._tokens is not None
        request = auth_pb2.RefreshTokenRequest(refresh_token=self._tokens.refresh_token)
        timeout = deadline.left()  # a deadline already passed sends nothing: the pair stays
        try:
            reply = await self._auth.RefreshToken(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if not self._password:
                # A kept session and nothing to sign in with: the caller decides. Refused,
                # it is over; otherwise (unreachable) the same token may be tried again.
                if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
                    self._tokens = None
                    raise HitlClientError(
                        grpc.StatusCode.UNAUTHENTICATED,
                        f"session expired or revoked ({exc.details() or 'refused'})",
                    ) from None
                raise _error(exc) from None
            self._tokens = None
            if exc.code() is not grpc.StatusCode.UNAUTHENTICATED:  # not a plain expiry
                log.warning("refresh failed with %s; signing in again", exc.code().name)
            await self._login(deadline)
            return
        self._set_tokens(reply.tokens)

    def _bearer(self) -> Metadata:
        assert self._tokens is not None
        return (("authorization", f"Bearer {self._tokens.access_token}"),)

    async def _metadata(self, deadline: _Deadline, *, rejected: Metadata | None = None) -> Metadata:
        """Credentials for a call; `rejected` is what the server just refused as expired."""
        async with self._signing_in:
            if self._store is None:
                await self._renew(deadline, rejected)
            else:
                with self._store.exclusive():
                    kept = self._store.load()
                    if kept is not None and (
                        self._tokens is None or kept.refresh_token != self._tokens.refresh_token
                    ):
                        self._tokens = kept  # another process rotated it, or first use
                    await self._renew(deadline, rejected)
            return self._bearer()

    async def _renew(self, deadline: _Deadline, rejected: Metadata | None) -> None:
        if self._tokens is None:
            await self._login(deadline)
        elif rejected is not None and rejected == self._bearer():
            # Only the first of several calls refused together renews the token.
            await self._refresh(deadline)
        else:
            expires = self._tokens.access_expires_at.seconds
            if expires and expires - time.time() < REFRESH_MARGIN_S:
                await self._refresh(deadline)

    @property
    def tokens(self) -> auth_pb2.TokenPair | None:
        """The current token pair, if signed in."""
        return self._tokens

    async def signed_in(self) -> auth_pb2.TokenPair:
        """Signs in, or renews an access token about to expire; the pair then in use."""
        await self._metadata(_Deadline(self._timeout_s))
        assert self._tokens is not None
        return self._tokens

    async def logout(self) -> None:
        """Revokes this session's refresh token on the server; the client is signed out."""
        if self._tokens is None and self._store is None:
            return
        # The refresh token current after any renewal the call itself would make.
        tokens = await self.signed_in()
        request = auth_pb2.LogoutRequest(refresh_token=tokens.refresh_token)
        await self._call(self._auth.Logout, request)
        self._tokens = None

    # -- calls --------------------------------------------------------------------------

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        deadline: _Deadline,
        metadata: Metadata | None = None,
    ) -> Resp:
        """One call in what is left of `deadline`; grpc retries it if in RETRIED_METHODS."""
        try:
            return await method(request, metadata=metadata, timeout=deadline.left())
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def _call(
        self, method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp], request: Req
    ) -> Resp:
        """A unary call, signed in, renewed once on UNAUTHENTICATED, all in one deadline."""
        deadline = _Deadline(self._timeout_s)
        metadata = await self._metadata(deadline)
        try:
            return await self._unary(method, request, deadline, metadata)
        except HitlClientError as exc:
            if exc.code is not grpc.StatusCode.UNAUTHENTICATED:
                raise
        metadata = await self._metadata(deadline, rejected=metadata)
        return await self._unary(method, request, deadline, metadata)

    async def submit_decision(
        self, request: decision_pb2.SubmitDecisionRequest
    ) -> decision_pb2.SubmitDecisionResponse:
        """Queues an analysis for a human; safe to repeat (idempotent on analysis_id)."""
        return await self._call(self._decisions.SubmitDecision, request)

    async def get_decision(self, analysis_id: str) -> decision_pb2.Decision:
        """A decision's current state."""
        request = decision_pb2.GetDecisionRequest(analysis_id=analysis_id)
        return (await self._call(self._decisions.GetDecision, request)).decision

    async def list_pending_page(
        self,
        priorities: Iterable[decision_pb2.Priority.ValueType] = (),
        *,
        statuses: Iterable[decision_pb2.DecisionStatus.ValueType] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> decision_pb2.ListPendingDecisionsResponse:
        """One page of the open queue, most urgent first; its next_page_token, if any, follows."""
        request = decision_pb2.ListPendingDecisionsRequest(
            priorities=priorities, statuses=statuses, page_size=page_size, page_token=page_token
        )
        return await self._call(self._decisions.ListPendingDecisions, request)

    async def list_pending(
        self,
        priorities: Iterable[decision_pb2.Priority.ValueType] = (),
        *,
        statuses: Iterable[decision_pb2.DecisionStatus.ValueType] = (),
        page_size: int = 0,
    ) -> AsyncIterator[decision_pb2.Decision]:
        """The whole open queue, page after page (each page one call with its own deadline)."""
        wanted, open_statuses = list(priorities), list(statuses)
        token = ""
        while True:
            page = await self.list_pending_page(
                wanted, statuses=open_statuses, page_size=page_size, page_token=token
            )
            for decision in page.decisions:
                yield decision
            token = page.next_page_token
            if not token:
                return

    async def claim_decision(
        self, analysis_id: str, *, expected_version: int | None = None
    ) -> decision_pb2.Decision:
        """Puts a pending decision under review by this user, for the claim lease."""
        request = decision_pb2.ClaimDecisionRequest(
            analysis_id=analysis_id, **_expected(expected_version)
        )
        return (await self._call(self._decisions.ClaimDecision, request)).decision

    async def claim_lease(
        self, analysis_id: str, *, expected_version: int | None = None
    ) -> decision_pb2.ClaimDecisionResponse:
        """Claims a decision and returns it with the caller's lease (id, epoch, expiry)."""
        request = decision_pb2.ClaimDecisionRequest(
            analysis_id=analysis_id, **_expected(expected_version)
        )
        return await self._call(self._decisions.ClaimDecision, request)

    async def renew_lease(self, analysis_id: str, epoch: int) -> decision_pb2.RenewLeaseResponse:
        """Extends the caller's live lease of this epoch."""
        request = decision_pb2.RenewLeaseRequest(analysis_id=analysis_id, lease_epoch=epoch)
        return await self._call(self._decisions.RenewLease, request)

    async def reassign_decision(
        self, analysis_id: str, assignee: str, *, expected_version: int | None = None
    ) -> decision_pb2.ReassignDecisionResponse:
        """Hands a decision to another analyst on a new lease (the claimer or an admin)."""
        request = decision_pb2.ReassignDecisionRequest(
            analysis_id=analysis_id, assignee=assignee, **_expected(expected_version)
        )
        return await self._call(self._decisions.ReassignDecision, request)

    async def make_decisions(
        self,
        items: Iterable[decision_pb2.MakeDecisionsItem],
        status: decision_pb2.DecisionStatus.ValueType,
        *,
        notes: str = "",
        escalation_reason: str = "",
        otp: str = "",
    ) -> list[decision_pb2.MakeDecisionsResult]:
        """One verdict and note for up to 100 items; one result per item, in order."""
        request = decision_pb2.MakeDecisionsRequest(
            items=items, status=status, notes=notes, escalation_reason=escalation_reason, otp=otp
        )
        return list((await self._call(self._decisions.MakeDecisions, request)).results)

    async def release_decision(
        self,
        analysis_id: str,
        *,
        expected_version: int | None = None,
        lease_epoch: int | None = None,
    ) -> decision_pb2.Decision:
        """Gives a claimed decision back to the queue (fenced to `lease_epoch` when given)."""
        request = decision_pb2.ReleaseDecisionRequest(
            analysis_id=analysis_id, **_expected(expected_version, lease_epoch)
        )
        return (await self._call(self._decisions.ReleaseDecision, request)).decision

    async def make_decision(
        self,
        analysis_id: str,
        status: decision_pb2.DecisionStatus.ValueType,
        *,
        approved_actions: Iterable[decision_pb2.Action] = (),
        notes: str = "",
        escalation_reason: str = "",
        expected_version: int | None = None,
        lease_epoch: int | None = None,
        otp: str = "",
    ) -> decision_pb2.Decision:
        """Resolves a decision: APPROVED, REJECTED, or ESCALATED (with a reason).

        `lease_epoch` fences the verdict to the caller's live lease; `otp` is the fresh TOTP
        code that approving a high-impact action needs.
        """
        request = decision_pb2.MakeDecisionRequest(
            analysis_id=analysis_id,
            status=status,
            approved_actions=approved_actions,
            notes=notes,
            escalation_reason=escalation_reason,
            otp=otp,
        )
        if expected_version is not None:
            request.expected_version = expected_version
        if lease_epoch is not None:
            request.lease_epoch = lease_epoch
        return (await self._call(self._decisions.MakeDecision, request)).decision

    async def approve(
        self,
        analysis_id: str,
        actions: Iterable[decision_pb2.Action] = (),
        *,
        notes: str = "",
        expected_version: int | None = None,
        lease_epoch: int | None = None,
        otp: str = "",
    ) -> decision_pb2.Decision:
        """Approves a decision with the actions to carry out (`otp`: the step-up code)."""
        return await self.make_decision(
            analysis_id,
            decision_pb2.DECISION_STATUS_APPROVED,
            approved_actions=actions,
            notes=notes,
            expected_version=expected_version,
            lease_epoch=lease_epoch,
            otp=otp,
        )

    async def reject(
        self,
        analysis_id: str,
        *,
        notes: str = "",
        expected_version: int | None = None,
        lease_epoch: int | None = None,
    ) -> decision_pb2.Decision:
        """Rejects a decision: nothing is carried out."""
        return await self.make_decision(
            analysis_id,
            decision_pb2.DECISION_STATUS_REJECTED,
            notes=notes,
            expected_version=expected_version,
            lease_epoch=lease_epoch,
        )

    async def escalate_decision(
        self,
        analysis_id: str,
        reason: str,
        *,
        expected_version: int | None = None,
        lease_epoch: int | None = None,
    ) -> decision_pb2.Decision:
        """Hands a decision up to an admin, saying why."""
        request = decision_pb2.EscalateDecisionRequest(
            analysis_id=analysis_id, reason=reason, **_expected(expected_version, lease_epoch)
        )
        return (await self._call(self._decisions.EscalateDecision, request)).decision

    async def decision_stats(self) -> decision_pb2.GetDecisionStatsResponse:
        """The queue's figures: open by priority and state, outcomes, times to decision."""
        return await self._call(
            self._decisions.GetDecisionStats, decision_pb2.GetDecisionStatsRequest()
        )

    # -- accounts -----------------------------------------------------------------------

    async def current_user(self) -> auth_pb2.User:
        """The signed-in account."""
        return (await self._call(self._auth.GetCurrentUser, auth_pb2.GetCurrentUserRequest())).user

    async def setup_mfa(self, password: str) -> auth_pb2.SetupMfaResponse:
        """Starts MFA enrolment: a secret, its otpauth:// URI and backup codes (shown once)."""
        return await self._call(self._auth.SetupMfa, auth_pb2.SetupMfaRequest(password=password))

    async def confirm_mfa(self, code: str) -> auth_pb2.User:
        """Turns MFA on with a code from the authenticator."""
        request = auth_pb2.ConfirmMfaRequest(code=code)
        return (await self._call(self._auth.ConfirmMfa, request)).user

    async def create_user(
        self,
        username: str,
        password: str,
        role: access_pb2.Role.ValueType,
        *,
        email: str = "",
        full_name: str = "",
        certificate_subject: str = "",
    ) -> auth_pb2.User:
        """Creates an account (admin); a SERVICE one bound to a certificate subject may have
        no password (it then signs in by certificate only)."""
        request = auth_pb2.CreateUserRequest(
            username=username,
            password=password,
            role=role,
            email=email,
            full_name=full_name,
            certificate_subject=certificate_subject,
        )
        return (await self._call(self._auth.CreateUser, request)).user

    async def list_users(self, *, page_size: int = 0) -> AsyncIterator[auth_pb2.User]:
        """Every account, page after page (admin)."""
        token = ""
        while True:
            request = auth_pb2.ListUsersRequest(page_size=page_size, page_token=token)
            page = await self._call(self._auth.ListUsers, request)
            for user in page.users:
                yield user
            token = page.next_page_token
            if not token:
                return

    async def update_user(
        self,
        user_id: str,
        *,
        role: access_pb2.Role.ValueType | None = None,
        active: bool | None = None,
        email: str | None = None,
        full_name: str | None = None,
        new_password: str | None = None,
        certificate_subject: str | None = None,
    ) -> auth_pb2.User:
        """Changes the given fields of an account, and only those (admin); an empty
        `certificate_subject` unbinds the account's certificate."""
        request = auth_pb2.UpdateUserRequest(user_id=user_id)
        if role is not None:
            request.role = role
        if active is not None:
            request.active = active
        if email is not None:
            request.email = email
        if full_name is not None:
            request.full_name = full_name
        if new_password is not None:
            request.new_password = new_password
        if certificate_subject is not None:
            request.certificate_subject = certificate_subject
        given = (role, active, email, full_name, new_password, certificate_subject)
        names = ("role", "active", "email", "full_name", "new_password", "certificate_subject")
        request.update_mask.paths.extend(
            n for n, v in zip(names, given, strict=True) if v is not None
        )
        return (await self._call(self._auth.UpdateUser, request)).user

    async def unlock_user(self, username: str, *, peer: str = "") -> auth_pb2.User:
        """Lifts an account's sign-in lockout, and that client address's if given (admin)."""
        request = auth_pb2.UnlockUserRequest(username=username, peer=peer)
        return (await self._call(self._auth.UnlockUser, request)).user

    async def reset_user_mfa(self, user_id: str) -> auth_pb2.User:
        """Turns an account's MFA off and ends its sessions (admin)."""
        request = auth_pb2.ResetUserMfaRequest(user_id=user_id)
        return (await self._call(self._auth.ResetUserMfa, request)).user

    async def list_audit_events_page(
        self, request: audit_pb2.ListAuditEventsRequest
    ) -> audit_pb2.ListAuditEventsResponse:
        """One page of the audit trail; its next_page_token, if any, follows (admin)."""
        return await self._call(self._audit.ListAuditEvents, request)

    async def list_audit_events(
        self,
        *,
        actor: str = "",
        kind: str = "",
        target: str = "",
        since: timestamp_pb2.Timestamp | None = None,
        until: timestamp_pb2.Timestamp | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[audit_pb2.AuditEvent]:
        """The audit events matching every filter given, page after page (admin)."""
        request = audit_pb2.ListAuditEventsRequest(
            actor=actor, kind=kind, target=target, since=since, until=until, page_size=page_size
        )
        while True:
            page = await self.list_audit_events_page(request)
            for event in page.events:
                yield event
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

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
                metadata = await self._metadata(_Deadline(self._timeout_s))
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
                    await self._metadata(_Deadline(self._timeout_s), rejected=metadata)
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

    async def watch_decision(self, analysis_id: str) -> AsyncGenerator[decision_pb2.Decision, None]:
        """A decision's state now, then each change, until it reaches a terminal state.

        Resumes like `watch_pending`; a state seen before a reconnect is not repeated.
        """
        request = decision_pb2.WatchDecisionRequest(analysis_id=analysis_id)

        def open_call(
            md: Metadata,
        ) -> grpc.aio.UnaryStreamCall[Any, decision_pb2.WatchDecisionResponse]:
            return self._decisions.WatchDecision(
                request, metadata=md, timeout=self._stream_deadline_s
            )

        seen = -1
        async with aclosing(self._resuming(open_call)) as messages:
            async for message in messages:
                if message.decision.version <= seen:
                    continue
                seen = message.decision.version
                yield message.decision
                if message.decision.status in TERMINAL:
                    return

    async def wait_for_verdict(
        self, analysis_id: str, *, timeout_s: float | None = None
    ) -> decision_pb2.Decision:
        """Blocks until the decision reaches a terminal state and returns it (one call)."""

        async def wait() -> decision_pb2.Decision:
            async with aclosing(self.watch_decision(analysis_id)) as states:
                async for decision in states:
                    if decision.status in TERMINAL:
                        return decision
            raise AssertionError("unreachable: watch_decision ends at a terminal state")

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
