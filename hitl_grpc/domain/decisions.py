"""Decision operations over the unit of work: submit, read, queue, claim, decide, sweep."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, TypeVar

from hitl_grpc.domain import errors, lifecycle, validation
from hitl_grpc.domain.ports import EventKind, UnitOfWork, UnitOfWorkFactory
from hitl_grpc.domain.queue import READ_ROWS_MAX, PageRequest, QueueKey, QueueStats
from hitl_grpc.domain.validation import AnalysisDraft, VerdictDraft
from hitl_grpc.domain.values import (
    Action,
    Analysis,
    AnalysisId,
    AuditOutcome,
    AuditRecord,
    Decision,
    Principal,
    Priority,
    Resolution,
    Role,
    Status,
)

log = logging.getLogger("hitl_grpc.decisions")
T = TypeVar("T")

# A transition that lost a race is decided again on what is stored now; a decision
# changing this often under one caller is better answered ABORTED than spun on.
_RETRIES: Final = 8
# Rows per sweep transaction (three statements each): a batch ends well inside the
# database deadline, and replicas sweeping at once interleave their batches.
SWEEP_BATCH: Final = 50
SLA_REASON: Final = "SLA deadline passed without a verdict"

# A plan turns the decision as stored into the decision to store, or raises why not;
# the flag says whether the change records an SLA breach.
Plan = Callable[[Decision, datetime], tuple[Decision, bool]]


@dataclass(frozen=True)
class SweepReport:
    """What one sweep changed."""

    expired: int = 0
    escalated: int = 0
    released: int = 0


def _event_kind(before: Status | None, after: Status) -> EventKind:
    if after not in lifecycle.OPEN:
        return EventKind.REMOVED
    return EventKind.ADDED if before is None else EventKind.UPDATED


class DecisionOperations:
    """Every decision use case; one unit of work each."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        *,
        claim_lease: timedelta,
        sla: Mapping[Priority, timedelta],
    ) -> None:
        self._uow = uow
        self._claim_lease = claim_lease
        self._sla = dict(sla)

    # -- audit and events, written in the transaction of the change ---------------------

    async def _record(
        self,
        uow: UnitOfWork,
        kind: str,
        *,
        actor: str,
        peer: str,
        before: Decision | None,
        after: Decision,
        now: datetime,
    ) -> None:
        await uow.events.append(after, _event_kind(before.status if before else None, after.status))
        await uow.audit.append(
            AuditRecord(
                time=now,
                actor=actor,
                kind=kind,
                target=after.analysis_id,
                peer=peer,
                outcome=AuditOutcome.SUCCESS,
                details={
                    "from": before.status.name if before else "",
                    "to": after.status.name,
                    "version": str(after.version),
                },
            )
        )

    # -- submit and read ----------------------------------------------------------------

    async def submit(self, draft: AnalysisDraft, *, by: Principal) -> tuple[Decision, bool]:
        """Queues an analysis; the same payload again returns the stored decision."""
        analysis = await self._validated(draft)
        digest = validation.payload_hash(analysis)
        async with self._uow() as uow:
            decision = await uow.decisions.insert(
                analysis,
                digest,
                submitted_by=by.username,
                sla=self._sla[analysis.priority],
            )
            if decision is not None:
                # The INSERT stamped it on the database's clock; judged on the same one.
                late = validation.expiry_violation(analysis.expires_at, decision.created_at)
                if late is not None:
                    raise errors.InvalidField([late])  # leaving rolls the INSERT back
                await self._record(
                    uow,
                    "decision.submit",
                    actor=by.username,
                    peer=by.peer,
                    before=None,
                    after=decision,
                    now=decision.created_at,
                )
                await uow.commit()
                return decision, True
            found = await uow.decisions.get_with_hash(analysis.analysis_id)
        if found is None:  # pragma: no cover - a decision is never deleted
            raise errors.Unavailable("decision vanished while submitting, retry")
        existing, existing_digest = found
        foreign = by.role is Role.SERVICE and existing.submitted_by != by.username
        if existing_digest != digest or foreign:
            raise errors.AlreadyExists(
                f"analysis_id {analysis.analysis_id} was already submitted with another payload"
            )
        return existing, False

    async def _validated(self, draft: AnalysisDraft) -> Analysis:
        try:
            return validation.validate_analysis(draft)
        except errors.InvalidField as invalid:
            if draft.expires_at is None:
                raise
            # Every bad field is reported at once, a past expires_at too; only a request
            # that is refused anyway pays for reading the database's clock apart.
            async with self._uow(readonly=True) as uow:
                now = await uow.decisions.now()
            late = validation.expiry_violation(draft.expires_at, now)
            if late is None:
                raise
            raise errors.InvalidField([*invalid.violations, late]) from None

    async def get(self, analysis_id: AnalysisId, *, by: Principal) -> Decision:
        """One decision; a SERVICE account sees only the ones it submitted."""
        async with self._uow(readonly=True) as uow:
            decision = await uow.decisions.get(analysis_id)
        if decision is None or (by.role is Role.SERVICE and decision.submitted_by != by.username):
            raise errors.NotFound(f"no decision {analysis_id}")
        return decision

    async def list_pending(
        self,
        page: PageRequest,
        render: Callable[[Decision], T],
        size_of: Callable[[T], int],
        *,
        max_bytes: int,
    ) -> tuple[list[T], str]:
        """One page of the open queue, rendered, within `max_bytes`, and the next page's token.

        `size_of` measures a rendered item; the token is "" after the last page. A page
        ends early, with a token for the rest, rather than outgrow the message limit; it
        always holds one item at least, so paging moves on (submit limits keep any one
        decision well under the limit).
        """
        items: list[T] = []
        used = 0
        after = page.after
        async with self._uow(readonly=True) as uow:
            while True:
                # One row more than the page still needs says whether there is a next page.
                limit = min(page.size - len(items) + 1, READ_ROWS_MAX)
                rows = await uow.decisions.list_open(page.filter, after, limit)
                for decision in rows:
                    if len(items) == page.size:
                        return items, page.token_after(after)
                    rendered = render(decision)
                    size = size_of(rendered)
                    if items and used + size > max_bytes:
                        return items, page.token_after(after)
                    items.append(rendered)
                    used += size
                    after = QueueKey.of(decision)
                if len(rows) < limit:
                    return items, ""

    async def stats(self) -> QueueStats:
        """The queue's counts and times to decision."""
        async with self._uow(readonly=True) as uow:
            return await uow.decisions.stats()

    # -- transitions --------------------------------------------------------------------

    async def _transition(
        self,
        analysis_id: AnalysisId,
        kind: str,
        plan: Plan,
        *,
        by: Principal,
        expected_version: int | None,
    ) -> Decision:
        for _ in range(_RETRIES):
            async with self._uow() as uow:
                found = await uow.decisions.get_with_now(analysis_id)
                if found is None:
                    raise errors.NotFound(f"no decision {analysis_id}")
                current, now = found
                lifecycle.check_version(current, expected_version)
                after, breached = plan(current, now)
                stored = await uow.decisions.replace(current, after, sla_breached=breached)
                if stored is None:
                    # Changed between our read and our compare-and-set: judge it again.
                    continue
                await self._record(
                    uow,
                    kind,
                    actor=by.username,
                    peer=by.peer,
                    before=current,
                    after=stored,
                    now=now,
                )
                await uow.commit()
                return stored
        raise errors.VersionConflict(f"decision {analysis_id} kept changing, retry")

    def _next(self, current: Decision, now: datetime, **changes: object) -> Decision:
        return dataclasses.replace(
            current,
            version=current.version + 1,
            updated_at=now,
            **changes,  # type: ignore[arg-type]
        )

    async def claim(
        self, analysis_id: AnalysisId, *, by: Principal, expected_version: int | None = None
    ) -> Decision:
        """Puts the decision under review by the caller, or renews the caller's lease."""

        def plan(current: Decision, now: datetime) -> tuple[Decision, bool]:
            lifecycle.check_claim(current, by, now)
            return (
                self._next(
                    current,
                    now,
                    status=Status.IN_REVIEW,
                    claimed_by=by.username,
                    claim_expires_at=now + self._claim_lease,
                ),
                False,
            )

        return await self._transition(
            analysis_id, "decision.claim", plan, by=by, expected_version=expected_version
        )

    async def release(
        self, analysis_id: AnalysisId, *, by: Principal, expected_version: int | None = None
    ) -> Decision:
        """Gives a claimed decision back to the queue."""

        def plan(current: Decision, now: datetime) -> tuple[Decision, bool]:
            lifecycle.check_release(current, by, now)
            return (
                self._next(
                    current, now, status=Status.PENDING, claimed_by="", claim_expires_at=None
                ),
                False,
            )

        return await self._transition(
            analysis_id, "decision.release", plan, by=by, expected_version=expected_version
        )

    async def make(
        self,
        analysis_id: AnalysisId,
        draft: VerdictDraft,
        *,
        by: Principal,
        expected_version: int | None = None,
    ) -> Decision:
        """Approves, rejects or escalates, as one compare-and-set."""
        verdict = validation.validate_verdict(draft)
        if verdict.status is Status.ESCALATED:
            return await self.escalate(
                analysis_id,
                verdict.escalation_reason,
                by=by,
                expected_version=expected_version,
                notes=verdict.notes,
            )

        def plan(current: Decision, now: datetime) -> tuple[Decision, bool]:
            lifecycle.check_resolve(current, verdict.status, by, now)
            validation.check_drawn_from(
                verdict.approved_actions, current.analysis.recommended_actions
            )
            return self._closed(
                current,
                now,
                status=verdict.status,
                decided_by=by.username,
                approved_actions=verdict.approved_actions,
                notes=verdict.notes,
            )

        kind = f"decision.{verdict.status.name.lower()}"
        return await self._transition(
            analysis_id, kind, plan, by=by, expected_version=expected_version
        )

    async def escalate(
        self,
        analysis_id: AnalysisId,
        reason: str,
        *,
        by: Principal,
        expected_version: int | None = None,
        notes: str = "",
    ) -> Decision:
        """Hands the decision to an admin, with a reason."""
        validation.validate_reason(reason, "reason")

        def plan(current: Decision, now: datetime) -> tuple[Decision, bool]:
            lifecycle.check_resolve(current, Status.ESCALATED, by, now)
            return self._escalated(current, now, reason, by.username, notes), False

        return await self._transition(
            analysis_id, "decision.escalate", plan, by=by, expected_version=expected_version
        )

    def _escalated(
        self, current: Decision, now: datetime, reason: str, actor: str, notes: str = ""
    ) -> Decision:
        return self._next(
            current,
            now,
            status=Status.ESCALATED,
            claimed_by="",
            claim_expires_at=None,
            resolution=Resolution(
                status=Status.ESCALATED,
                notes=notes,
                escalation_reason=reason,
                decided_by=actor,
                decided_at=now,
            ),
        )

    # -- the sweeper's work -------------------------------------------------------------

    async def sweep(self) -> SweepReport:
        """Expires, escalates overdue and frees lapsed leases; safe with many replicas."""
        expired = await self._sweep_kind(
            "decision.expire", lambda uow: uow.decisions.expired(SWEEP_BATCH), self._expire
        )
        escalated = await self._sweep_kind(
            "decision.sla_escalate",
            lambda uow: uow.decisions.overdue(SWEEP_BATCH),
            self._sla_escalate,
        )
        released = await self._sweep_kind(
            "decision.lease_expired",
            lambda uow: uow.decisions.lapsed_leases(SWEEP_BATCH),
            self._lease_lapsed,
        )
        return SweepReport(expired, escalated, released)

    def _expire(self, current: Decision, now: datetime) -> tuple[Decision, bool]:
        return self._closed(current, now, status=Status.EXPIRED, decided_by=lifecycle.SYSTEM_ACTOR)

    def _closed(
        self,
        current: Decision,
        now: datetime,
        *,
        status: Status,
        decided_by: str,
        approved_actions: tuple[Action, ...] = (),
        notes: str = "",
    ) -> tuple[Decision, bool]:
        """The decision in a terminal state, its claim gone, and whether its SLA was missed."""
        earlier = current.resolution
        resolution = Resolution(
            status=status,
            approved_actions=approved_actions,
            notes=notes,
            # A verdict on an escalated item keeps why it was escalated.
            escalation_reason=earlier.escalation_reason if earlier else "",
            decided_by=decided_by,
            decided_at=now,
        )
        after = self._next(
            current,
            now,
            status=status,
            claimed_by="",
            claim_expires_at=None,
            resolution=resolution,
        )
        return after, now > current.sla_deadline

    def _sla_escalate(self, current: Decision, now: datetime) -> tuple[Decision, bool]:
        return self._escalated(current, now, SLA_REASON, lifecycle.SYSTEM_ACTOR), True

    def _lease_lapsed(self, current: Decision, now: datetime) -> tuple[Decision, bool]:
        after = self._next(
            current, now, status=Status.PENDING, claimed_by="", claim_expires_at=None
        )
        return after, False

    async def _sweep_kind(
        self,
        kind: str,
        candidates: Callable[[UnitOfWork], Awaitable[list[tuple[Decision, datetime]]]],
        plan: Plan,
    ) -> int:
        changed = 0
        while True:
            # One batch per transaction: the rows it holds are few and held briefly, and
            # another replica's sweep takes the rows this one holds no lock on.
            async with self._uow() as uow:
                due = await candidates(uow)
                won = 0
                for current, now in due:
                    after, breached = plan(current, now)
                    stored = await uow.decisions.replace(current, after, sla_breached=breached)
                    if stored is None:
                        continue  # a caller got there first
                    won += 1
                    await self._record(
                        uow,
                        kind,
                        actor=lifecycle.SYSTEM_ACTOR,
                        peer="",
                        before=current,
                        after=stored,
                        now=now,
                    )
                await uow.commit()
            changed += won
            if len(due) < SWEEP_BATCH or won == 0:
                return changed
