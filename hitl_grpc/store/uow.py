"""The unit of work: one transaction through the door, and its repositories."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Self, TypeVar

from hitl_grpc.domain.ports import Repositories
from hitl_grpc.store.audit import AuditLog
from hitl_grpc.store.backup_codes import BackupCodeRepository
from hitl_grpc.store.decisions import DecisionRepository
from hitl_grpc.store.door import Door, Passage
from hitl_grpc.store.events import EventLog
from hitl_grpc.store.group_commit import GroupCommit
from hitl_grpc.store.refresh_tokens import RefreshTokenRepository
from hitl_grpc.store.throttle import LoginThrottleRepository
from hitl_grpc.store.users import UserRepository
from hitl_grpc.store.webhooks import WebhookOutbox

T = TypeVar("T")


class UnitOfWork(Passage):
    """One transaction; nothing persists until commit()."""

    users: UserRepository
    refresh_tokens: RefreshTokenRepository
    audit: AuditLog
    backup_codes: BackupCodeRepository
    throttle: LoginThrottleRepository
    events: EventLog
    decisions: DecisionRepository
    webhooks: WebhookOutbox

    def __init__(
        self,
        door: Door,
        *,
        readonly: bool = False,
        pipelined: bool = False,
        after_commit: Callable[[], None] | None = None,
        webhook_urls: Sequence[str] = (),
    ) -> None:
        super().__init__(
            door.engine, timeout_s=door.timeout_s, readonly=readonly, pipelined=pipelined
        )
        self._after_commit = after_commit
        self._webhook_urls = webhook_urls

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        conn = self.connection
        self.users = UserRepository(conn)
        self.refresh_tokens = RefreshTokenRepository(conn)
        self.audit = AuditLog(conn)
        self.backup_codes = BackupCodeRepository(conn)
        self.throttle = LoginThrottleRepository(conn)
        self.events = EventLog(conn)
        self.decisions = DecisionRepository(conn)
        self.webhooks = WebhookOutbox(conn, self._webhook_urls)
        return self

    async def commit(self) -> None:
        """Makes every change of this unit durable at once."""
        # The audit rows, then the events, each in one statement; on PostgreSQL the COMMIT
        # links the rows into the audit chain and publishes the events, in that order.
        await self.audit.flush()
        await self.events.flush()
        await super().commit()
        if self.events.appended and self._after_commit is not None:
            # Wakes this process's event reader; other processes learn by NOTIFY.
            self._after_commit()


class UnitOfWorkFactory:
    """Opens units of work through one door."""

    def __init__(
        self,
        door: Door,
        *,
        after_commit: Callable[[], None] | None = None,
        webhook_urls: Sequence[str] = (),
        group_commit_max: int = 0,
    ) -> None:
        self.door = door
        # Called after each commit that appended events (the server's event reader wakes).
        self._after_commit = after_commit
        # Where notifications go; none: no webhook is queued.
        self._webhook_urls = tuple(webhook_urls)
        # Writes share transactions and commits (store/group_commit.py); None: one each.
        self.group: GroupCommit | None = None
        if group_commit_max > 0:
            self.group = GroupCommit(
                door,
                max_items=group_commit_max,
                after_commit=after_commit,
                webhook_urls=self._webhook_urls,
            )

    def __call__(self, *, readonly: bool = False, pipelined: bool = False) -> UnitOfWork:
        """A new, not yet entered, unit of work (see the port for `pipelined`)."""
        return UnitOfWork(
            self.door,
            readonly=readonly,
            pipelined=pipelined,
            after_commit=self._after_commit,
            webhook_urls=self._webhook_urls,
        )

    async def write(self, work: Callable[[Repositories], Awaitable[T]]) -> T:
        """Runs `work` and commits what it wrote, or nothing if it raises; its result."""
        if self.group is not None:
            return await self.group.write(work)
        async with self() as uow:
            result = await work(uow)
            await uow.commit()
        return result

    async def close(self) -> None:
        """Stops the group-commit writer, if there is one."""
        if self.group is not None:
            await self.group.close()
