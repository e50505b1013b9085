"""Decision operations over the unit of work: submit, read, queue, claim, decide, sweep."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

from hitl_grpc.domain import errors, lifecycle, notifications, validation
from hitl_grpc.domain.access import checked_principal
from hitl_grpc.domain.ports import (
    EventKind,
    HotStatements,
    Repositories,
    StepUp,
    UnitOfWorkFactory,
)
from hitl_grpc.domain.queue import READ_ROWS_MAX, PageEntry, PageRequest, QueueKey, QueueStats
from hitl_grpc.domain.validation import AnalysisDraft, VerdictDraft
from hitl_grpc.domain.values import (
    AccountCheck,
    ActionType,
    Analysis,
    AnalysisId,
    AuditOutcome,
    AuditRecord,
    Decision,
    Principal,
    Priority,
    Role,
    Status,
)

T = TypeVar("T")

# A transition that lost a race is decided again on what is stored now; a decision
# changing this often under one caller is better answered ABORTED than spun on.
_RETRIES: Final = 8
# Items one MakeDecisions call may carry.
BULK_MAX: Final = 100
# Rows per sweep transaction (three statements each): a batch ends well inside the
# database deadline, and replicas sweeping at once interleave their batches.
SWEEP_BATCH: Final = 50

# An audit record's time where the statement that writes it stamps its own.
_STAMPED_BY_STATEMENT: Final = datetime.fromtimestamp(0, UTC)

# One lifecycle step on the decision as stored and the database's time (lifecycle.py).
Step = Callable[[Decision, datetime], lifecycle.Transition]


@dataclass(frozen=True)
class BulkItem:
    """One item of a MakeDecisions call: which decision, its own actions and fences."""

    analysis_id: AnalysisId
    draft: VerdictDraft
    expected_version: int | None = None
    lease_epoch: int | None = None


@dataclass(frozen=True)
class BulkOutcome:
    """What became of one item: the stored decision, or the error that refused it."""

    analysis_id: str
    decision: Decision | None = None
    error: errors.DomainError | None = None


@dataclass(frozen=True)
class SweepReport:
    """What one sweep changed."""

    expired: int = 0
    escalated: int = 0
    released: int = 0


def visible_to(principal: Principal, decision: Decision) -> bool:
    """Whether the caller may see the decision: a machine account sees only what it submitted."""
    return principal.role is not Role.SERVICE or decision.submitted_by == principal.username


def _change(before: Decision | None, after: Decision) -> dict[str, str]:
    """What an audit row of a change records of it."""
    return {
        "from": before.status.name if before else "",
        "to": after.status.name,
        "version": str(after.version),
    }


def _event_kind(before: Status | None, after: Status) -> EventKind:
    if after not in lifecycle.OPEN:
        return EventKind.REMOVED
    return EventKind.ADDED if before is None else EventKind.UPDATED


def _resubmitted(found: tuple[Decision, str], digest: str, by: Principal) -> Decision:
    """The stored decision a submit repeated, if it is the same payload by a caller who
    may see it; AlreadyExists otherwise."""
    existing, existing_digest = found
    # To a machine account another's decision does not exist, so it is not "the same".
    if existing_digest != digest or not visible_to(by, existing):
        raise errors.AlreadyExists(
            f"analysis_id {existing.analysis_id} was already submitted with another payload"
        )
    return existing


def _from_rendered(
    page: PageRequest,
    keys: Sequence[PageEntry],
    cached: Callable[[AnalysisId, int], T | None],
    size_of: Callable[[T], int],
    max_bytes: int,
) -> tuple[list[T], str] | None:
    """The page from decisions already rendered at the versions read; None on any miss.

    `keys` are the next open decisions after the page's cursor, one more than the page
    holds if there are that many (which says a next page follows).
    """
    items: list[T] = []
    used = 0
    for n, entry in enumerate(keys):
        if len(items) == page.size:
            return items, page.token_after(keys[n - 1].key())
        rendered = cached(AnalysisId(entry.analysis_id), entry.version)
        if rendered is None:
            return None
        size = size_of(rendered)
        if items and used + size > max_bytes:
            return items, page.token_after(keys[n - 1].key())
        items.append(rendered)
        used += size
    return items, ""


class DecisionOperations:
    """Every decision use case; one unit of work each."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        *,
        claim_lease: timedelta,
        sla: Mapping[Priority, timedelta],
        rules: lifecycle.ApprovalRules | None = None,
        step_up_actions: Collection[ActionType] = (),
        step_up: StepUp | None = None,
        hot: HotStatements | None = None,
    ) -> None:
        self._uow = uow
        # Submits in one statement with the caller's access check (submit_checked).
        self._hot = hot
        self._claim_lease = claim_lease
        self._sla = dict(sla)
        self._rules = rules or lifecycle.ApprovalRules()
        self._step_up_actions = frozenset(step_up_actions)
        self._step_up = step_up

    # -- audit and events, written in the transaction of the change ---------------------

    async def _record(
        self,
        uow: Repositories,
        kind: lifecycle.AuditKind,
        *,
        actor: str,
        peer: str,
        before: Decision | None,
        after: Decision,
        now: datetime,
        details: Mapping[str, str] | None = None,
    ) -> None:
        await uow.events.append(after, _event_kind(before.status if before else None, after.status))
        await uow.audit.append(
            AuditRecord(
                time=now,
                actor=actor,
                kind=kind.value,
                target=after.analysis_id,
                peer=peer,
                outcome=AuditOutcome.SUCCESS,
                details={**_change(before, after), **(details or {})},
            )
        )
        # Webhooks leave from the outbox too: queued in this transaction, sent after it.
        notification = notifications.notification_for(kind, after)
        if notification is not None:
            await uow.webhooks.enqueue(
                notification.value,
                notifications.notification_body(notification, after, at=now),
            )

    # -- submit and read ----------------------------------------------------------------

    async def submit(self, draft: AnalysisDraft, *, by: Principal) -> tuple[Decision, bool]:
        """Queues an analysis; the same payload again returns the stored decision."""
        analysis = await self._validated(draft)
        digest = validation.payload_hash(analysis)

        async def insert(uow: Repositories) -> tuple[Decision | None, tuple[Decision, str] | None]:
            decision = await uow.decisions.insert(
                analysis,
                digest,
                submitted_by=by.username,
                sla=self._sla[analysis.priority],
                action_verdicts=lifecycle.initial_verdicts(analysis, self._rules),
            )
            if decision is None:
                return None, await uow.decisions.get_with_hash(analysis.analysis_id)
            # The INSERT stamped it on the database's clock; judged on the same one.
            late = validation.expiry_violation(analysis.expires_at, decision.created_at)
            if late is not None:
                raise errors.InvalidField([late])  # raising rolls the INSERT back
            await self._record(
                uow,
                lifecycle.AuditKind.SUBMIT,
                actor=by.username,
                peer=by.peer,
                before=None,
                after=decision,
                now=decision.created_at,
            )
            return decision, None

        decision, found = await self._uow.write(insert)
        if decision is not None:
            return decision, True
        if found is None:  # pragma: no cover - a decision is never deleted
            raise errors.Unavailable("decision vanished while submitting, retry")
        return _resubmitted(found, digest, by), False

    async def submit_checked(
        self, draft: AnalysisDraft, check: AccountCheck
    ) -> tuple[Decision, bool, Principal]:
        """submit() for a caller whose access check is made by the submit's own statement.

        One round trip: the account as it is now admits the caller, and the decision, its
        event and its audit row commit, or nothing is written. Also the caller it admitted.
        """
        assert self._hot is not None, "submit_checked needs the store's hot statements"
        analysis = await self._validated(draft)
        digest = validation.payload_hash(analysis)
        pending = Decision(
            analysis=analysis,
            status=Status.PENDING,
            version=1,
            created_at=_STAMPED_BY_STATEMENT,
            updated_at=_STAMPED_BY_STATEMENT,
            sla_deadline=_STAMPED_BY_STATEMENT,
            submitted_by=check.username,
            action_verdicts=lifecycle.initial_verdicts(analysis, self._rules),
        )
        outcome = await self._hot.submit(
            check,
            pending,
            digest,
            sla=self._sla[analysis.priority],
            audit=AuditRecord(
                time=_STAMPED_BY_STATEMENT,
                actor=check.username,
                kind=lifecycle.AuditKind.SUBMIT.value,
                target=analysis.analysis_id,
                peer=check.peer,
                outcome=AuditOutcome.SUCCESS,
                details=_change(None, pending),
            ),
        )
        by = checked_principal(outcome.access, check)
        if outcome.decision is not None:
            return outcome.decision, True, by
        async with self._uow(readonly=True) as uow:
            found = await uow.decisions.get_with_hash(analysis.analysis_id)
        if found is None:
            # Nothing stored under the id: the statement refused it for its expiry.
            assert outcome.now is not None
            late = validation.expiry_violation(analysis.expires_at, outcome.now)
            if late is None:  # pragma: no cover - a decision is never deleted
                raise errors.Unavailable("decision vanished while submitting, retry")
            raise errors.InvalidField([late])
        return _resubmitted(found, digest, by), False, by

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
        if decision is None or not visible_to(by, decision):
            raise errors.NotFound(f"no decision {analysis_id}")
        return decision

    async def list_pending(
        self,
        page: PageRequest,
        render: Callable[[Decision], T],
        size_of: Callable[[T], int],
        *,
        max_bytes: int,
        cached: Callable[[AnalysisId, int], T | None] | None = None,
    ) -> tuple[list[T], str]:
        """One page of the open queue, rendered, within `max_bytes`, and the next page's token.

        `size_of` measures a rendered item; the token is "" after the last page. A page
        ends early, with a token for the rest, rather than outgrow the message limit; it
        always holds one item at least, so paging moves on (submit limits keep any one
        decision well under the limit). With `cached`, which gives a decision already
        rendered at a version, the page's keys and versions are read first, and the
        whole rows only if one of them is not rendered yet.
        """
        if cached is not None:
            async with self._uow(readonly=True) as uow:
                keys = await uow.decisions.open_keys(page.filter, page.after, page.size + 1)
            found = _from_rendered(page, keys, cached, size_of, max_bytes)
            if found is not None:
                return found
        return await self._read_page(page, render, size_of, max_bytes)

    async def _read_page(
        self,
        page: PageRequest,
        render: Callable[[Decision], T],
        size_of: Callable[[T], int],
        max_bytes: int,
    ) -> tuple[list[T], str]:
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

    async def list_pending_checked(
        self,
        page: PageRequest,
        check: AccountCheck,
        cached: Callable[[AnalysisId, int], T | None],
        render: Callable[[Decision], T],
        size_of: Callable[[T], int],
        *,
        max_bytes: int,
    ) -> tuple[list[T], str, Principal]:
        """list_pending() for a caller whose access check the page's own statement makes.

        One round trip when every decision of the page is already rendered: the statement
        checks the account and reads the page's keys and versions. On any miss the page
        is read whole and rendered, a moment after the check. Also the caller it admitted.
        """
        assert self._hot is not None, "list_pending_checked needs the store's hot statements"
        found = await self._hot.page_keys(check, page.filter, page.after, page.size + 1)
        by = checked_principal(found.access, check)
        rendered = _from_rendered(page, found.keys, cached, size_of, max_bytes)
        if rendered is None:
            rendered = await self._read_page(page, render, size_of, max_bytes)
        return (*rendered, by)

    async def stats(self) -> QueueStats:
        """The queue's counts and times to decision."""
        async with self._uow(readonly=True) as uow:
            return await uow.decisions.stats()

    # -- transitions: load, apply, compare-and-set, record --------------------------------

    async def _store(
        self,
        uow: Repositories,
        current: Decision,
        transition: lifecycle.Transition,
        now: datetime,
        actor: str,
        peer: str,
    ) -> Decision | None:
        """The transition as one compare-and-set, recorded; None if another writer won."""
        stored = await uow.decisions.replace(
            current, transition.decision, sla_breached=transition.sla_breached
        )
        if stored is not None:
            await self._record(
                uow,
                transition.kind,
                actor=actor,
                peer=peer,
                before=current,
                after=stored,
                now=now,
                details=transition.details,
            )
        return stored

    async def _apply(
        self,
        analysis_id: AnalysisId,
        step: Step,
        *,
        by: Principal,
        expected_version: int | None,
    ) -> Decision:

        async def attempt(uow: Repositories) -> Decision | None:
            found = await uow.decisions.get_with_now(analysis_id)
            if found is None:
                raise errors.NotFound(f"no decision {analysis_id}")
            current, now = found
            lifecycle.check_version(current, expected_version)
            return await self._store(uow, current, step(current, now), now, by.username, by.peer)

        for _ in range(_RETRIES):
            stored = await self._uow.write(attempt)
            if stored is not None:
                return stored
            # Changed between our read and our compare-and-set: judge it again.
        raise errors.VersionConflict(f"decision {analysis_id} kept changing, retry")

    async def claim(
        self, analysis_id: AnalysisId, *, by: Principal, expected_version: int | None = None
    ) -> Decision:
        """Puts the decision under review by the caller, or renews the caller's lease."""
        lease = self._claim_lease
        lease_id = str(uuid.uuid4())
        return await self._apply(
            analysis_id,
            lambda current, now: lifecycle.claim(current, by, now, lease, lease_id),
            by=by,
            expected_version=expected_version,
        )

    async def renew(self, analysis_id: AnalysisId, epoch: int, *, by: Principal) -> Decision:
        """Extends the caller's live lease of this epoch by the lease length."""
        lease = self._claim_lease
        return await self._apply(
            analysis_id,
            lambda current, now: lifecycle.renew(current, by, now, lease, epoch),
            by=by,
            expected_version=None,
        )

    async def renew_held(self, *, by: Principal) -> int:
        """Renews the caller's live leases that are past half their length; how many.

        An analyst's open WatchPending stream calls this as it runs, so a lease lives as long
        as its holder is watching the queue. Leases with more than half their length left are
        not touched: a watching analyst costs one indexed read per call, not a write.
        """
        lease = self._claim_lease

        async def renew_all(uow: Repositories) -> int:
            renewed = 0
            for current, now in await uow.decisions.held_leases(
                by.username, lease / 2, SWEEP_BATCH
            ):
                transition = lifecycle.renew(current, by, now, lease, current.lease_epoch)
                transition = dataclasses.replace(
                    transition, details={**transition.details, "by": "watch"}
                )
                if await self._store(uow, current, transition, now, by.username, by.peer):
                    renewed += 1
            return renewed

        return await self._uow.write(renew_all)

    async def reassign(
        self,
        analysis_id: AnalysisId,
        to: str,
        *,
        by: Principal,
        expected_version: int | None = None,
    ) -> Decision:
        """Hands the item to another analyst (or admin) on a new lease; the audit names both."""
        async with self._uow(readonly=True) as uow:
            account = await uow.users.by_username(to)
        if account is None or not account.user.active:
            raise errors.NotFound(f"no active user {to}")
        if account.user.role not in (Role.ANALYST, Role.ADMIN):
            raise errors.WrongState(
                f"{account.user.username} is a {account.user.role.name.lower()}: only an "
                "analyst or an admin can review a decision"
            )
        assignee = account.user.username
        lease = self._claim_lease
        lease_id = str(uuid.uuid4())
        return await self._apply(
            analysis_id,
            lambda current, now: lifecycle.reassign(current, by, assignee, now, lease, lease_id),
            by=by,
            expected_version=expected_version,
        )

    async def release(
        self,
        analysis_id: AnalysisId,
        *,
        by: Principal,
        expected_version: int | None = None,
        lease_epoch: int | None = None,
    ) -> Decision:
        """Gives a claimed decision back to the queue."""
        return await self._apply(
            analysis_id,
            lambda current, now: lifecycle.release(current, by, now, lease_epoch),
            by=by,
            expected_version=expected_version,
        )

    def _needs_step_up(self, verdicts: Sequence[validation.Verdict]) -> list[str]:
        """The high-impact action types these verdicts approve, as wire names."""
        return sorted(
            {
                f"ACTION_TYPE_{a.type.name}"
                for v in verdicts
                if v.status is Status.APPROVED
                for a in v.approved_actions
                if a.type in self._step_up_actions
            }
        )

    async def _check_step_up(
        self, verdicts: Sequence[validation.Verdict], by: Principal, otp: str
    ) -> None:
        high_impact = self._needs_step_up(verdicts)
        if not high_impact:
            return
        if self._step_up is None:  # pragma: no cover - the server always wires one
            raise errors.WrongState("step-up MFA is not available on this server")
        await self._step_up.verify(by, otp, ", ".join(high_impact))

    async def make(
        self,
        analysis_id: AnalysisId,
        draft: VerdictDraft,
        *,
        by: Principal,
        expected_version: int | None = None,
        lease_epoch: int | None = None,
        otp: str = "",
    ) -> Decision:
        """Approves, rejects or escalates, as one compare-and-set.

        Approving a high-impact action first spends a fresh TOTP code of the caller's.
        """
        verdict = validation.validate_verdict(draft)
        await self._check_step_up([verdict], by, otp)
        return await self._decide(analysis_id, verdict, by, expected_version, lease_epoch)

    async def _decide(
        self,
        analysis_id: AnalysisId,
        verdict: validation.Verdict,
        by: Principal,
        expected_version: int | None,
        lease_epoch: int | None,
    ) -> Decision:
        rules = self._rules
        return await self._apply(
            analysis_id,
            lambda current, now: lifecycle.decide(current, verdict, by, now, rules, lease_epoch),
            by=by,
            expected_version=expected_version,
        )

    async def make_many(
        self, items: Sequence[BulkItem], *, by: Principal, otp: str = ""
    ) -> list[BulkOutcome]:
        """One verdict per item, each its own compare-and-set: some may fail, the rest land.

        A bad request as a whole (too many items, a step-up code that fails) refuses every
        item; an item's own problem is reported in its outcome only.
        """
        if not items:
            raise errors.InvalidField.one("items", "must hold at least one item")
        if len(items) > BULK_MAX:
            raise errors.InvalidField.one(
                "items", f"must hold at most {BULK_MAX} items, got {len(items)}"
            )
        verdicts: list[validation.Verdict | errors.DomainError] = []
        for i, item in enumerate(items):
            try:
                validation.parse_analysis_id(item.analysis_id, f"items[{i}].analysis_id")
                verdicts.append(validation.validate_verdict(item.draft))
            except errors.InvalidField as invalid:
                verdicts.append(invalid)
        await self._check_step_up(
            [v for v in verdicts if isinstance(v, validation.Verdict)], by, otp
        )
        outcomes = []
        for item, verdict in zip(items, verdicts, strict=True):
            if isinstance(verdict, errors.DomainError):
                outcomes.append(BulkOutcome(item.analysis_id, error=verdict))
                continue
            try:
                stored = await self._decide(
                    item.analysis_id, verdict, by, item.expected_version, item.lease_epoch
                )
            except (errors.Unavailable, errors.Unauthenticated):
                raise  # not this item's problem: the caller retries the call
            except errors.DomainError as refused:
                outcomes.append(BulkOutcome(item.analysis_id, error=refused))
            else:
                outcomes.append(BulkOutcome(item.analysis_id, decision=stored))
        return outcomes

    async def escalate(
        self,
        analysis_id: AnalysisId,
        reason: str,
        *,
        by: Principal,
        expected_version: int | None = None,
        lease_epoch: int | None = None,
    ) -> Decision:
        """Hands the decision to an admin, with a reason."""
        validation.validate_reason(reason, "reason")
        return await self._apply(
            analysis_id,
            lambda current, now: lifecycle.escalate(current, reason, by, now, "", lease_epoch),
            by=by,
            expected_version=expected_version,
        )

    # -- the sweeper's work -------------------------------------------------------------

    async def sweep(self) -> SweepReport:
        """Expires, escalates overdue and frees lapsed leases; safe with many replicas."""
        expired = await self._sweep_kind(
            lambda uow: uow.decisions.expired(SWEEP_BATCH), lifecycle.expire
        )
        escalated = await self._sweep_kind(
            lambda uow: uow.decisions.overdue(SWEEP_BATCH), lifecycle.sla_escalate
        )
        released = await self._sweep_kind(
            lambda uow: uow.decisions.lapsed_leases(SWEEP_BATCH), lifecycle.lease_lapsed
        )
        return SweepReport(expired, escalated, released)

    async def _sweep_kind(
        self,
        candidates: Callable[[Repositories], Awaitable[list[tuple[Decision, datetime]]]],
        step: Step,
    ) -> int:
        async def sweep_batch(uow: Repositories) -> tuple[int, int]:
            due = await candidates(uow)
            won = 0
            for current, now in due:
                transition = step(current, now)
                if await self._store(uow, current, transition, now, lifecycle.SYSTEM_ACTOR, ""):
                    won += 1
                # else a caller got there first
            return len(due), won

        changed = 0
        while True:
            # One batch per write: the rows it holds are few and held briefly, and
            # another replica's sweep takes the rows this one holds no lock on.
            due, won = await self._uow.write(sweep_batch)
            changed += won
            if due < SWEEP_BATCH or won == 0:
                return changed
