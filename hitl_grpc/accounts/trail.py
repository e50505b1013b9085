"""The audit trail as the auth layer writes and an admin reads it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

from hitl_grpc.domain.clock import Clock
from hitl_grpc.domain.errors import InvalidField
from hitl_grpc.domain.ports import AuditQuery, UnitOfWorkFactory
from hitl_grpc.domain.values import AuditOutcome, AuditRecord

PAGE_DEFAULT = 100
PAGE_MAX = 1000
# Rows an export reads per transaction: no connection is held while the client reads.
EXPORT_PAGE = 500


class AuditTrail:
    """Stamps audit records with the service clock; pages through them for admins."""

    def __init__(self, uow: UnitOfWorkFactory, clock: Clock) -> None:
        self._uow = uow
        self._clock = clock

    def record(
        self,
        kind: str,
        *,
        actor: str,
        target: str,
        peer: str,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        **details: str,
    ) -> AuditRecord:
        """An audit record of an action happening now; append it in the change's unit."""
        return AuditRecord(
            time=self._clock.now(),
            actor=actor,
            kind=kind,
            target=target,
            peer=peer,
            outcome=outcome,
            details=details,
        )

    def own(
        self,
        kind: str,
        username: str,
        peer: str,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        **details: str,
    ) -> AuditRecord:
        """An audit record of `username` acting on their own account, now."""
        return self.record(
            kind, actor=username, target=username, peer=peer, outcome=outcome, **details
        )

    def locked_out(self, kind: str, username: str, peer: str) -> AuditRecord:
        """The record of an attempt on `username`'s own account the lockout refused."""
        return self.own(kind, username, peer, AuditOutcome.DENIED, reason="locked")

    async def page(self, query: AuditQuery) -> tuple[list[AuditRecord], int | None]:
        """One page of matching events, newest first, and the cursor of the next page."""
        # One extra row tells whether another page exists without a count query.
        async with self._uow(readonly=True) as uow:
            found = await uow.audit.query(replace(query, limit=query.limit + 1))
        page = found[: query.limit]
        return page, (page[-1].id if len(found) > query.limit and page else None)

    async def export(self, after_seq: int) -> AsyncIterator[AuditRecord]:
        """Every event past `after_seq` in chain order, which is commit order: a later
        export from the last seq sent misses nothing and repeats nothing."""
        async with self._uow(readonly=True) as uow:
            last = await uow.audit.last_seq()
        if after_seq > last:
            raise InvalidField.one("resume_cursor", "is not a cursor this method returned")
        while True:
            async with self._uow(readonly=True) as uow:
                page = await uow.audit.after(after_seq, EXPORT_PAGE)
            for record in page:
                yield record
            if len(page) < EXPORT_PAGE:
                return
            after_seq = page[-1].seq
