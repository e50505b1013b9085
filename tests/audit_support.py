"""Reading the audit trail back in tests."""

from __future__ import annotations

from hitl_grpc.domain.ports import AuditQuery
from hitl_grpc.domain.values import AuditRecord
from tests.harness import Harness


async def audit_rows(server: Harness, kind: str, target: str = "") -> list[AuditRecord]:
    """Every audit row of this kind (and target, if given), newest first."""
    found, _ = await server.running.accounts.trail.page(
        AuditQuery(kind=kind, target=target, limit=1000)
    )
    return found
