"""Outgoing webhooks in the database: queued with their change, claimed with a lease, marked.

A notification becomes one row per receiver URL in the transaction of the change, so a
restart loses none and a rolled-back change sends none. Senders claim due rows with a
lease: on PostgreSQL the claim skips rows another replica's claim has locked (SKIP
LOCKED), on SQLite writers are serialized by BEGIN IMMEDIATE; a claim moves the lease
into the future, so no second replica takes the row until the first one's lease lapses
(it crashed, or hung past its own timeout). A row is marked only by the claim that holds
it. So each row is sent at least once, and again only after a lease lapsed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from hitl_grpc.domain.notifications import Delivery, DeliveryState
from hitl_grpc.store.codec import aware, storable
from hitl_grpc.store.decisions import _clock_offset, _database_clock, _offset_value
from hitl_grpc.store.door import Door
from hitl_grpc.store.tables import webhook_deliveries

ERROR_MAX: Final = 500
_INSERT: Final = insert(webhook_deliveries)


def _delivery(row: Any) -> Delivery:
    return Delivery(
        id=row.id,
        idempotency_key=row.idempotency_key,
        url=row.url,
        event_type=row.event_type,
        body=row.body,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        next_attempt_at=_must(row.next_attempt_at),
        last_error=row.last_error,
        created_at=_must(row.created_at),
        delivered_at=aware(row.delivered_at),
        claim_token=row.claim_token or "",
    )


def _must(value: datetime | None) -> datetime:
    result = aware(value)
    assert result is not None
    return result.astimezone(UTC)


class WebhookOutbox:
    """Queues notifications in the caller's transaction, one row per receiver."""

    def __init__(self, conn: AsyncConnection, urls: Sequence[str]) -> None:
        self._conn = conn
        self._urls = tuple(urls)
        self._postgres = conn.dialect.name == "postgresql"

    async def enqueue(self, event_type: str, body: dict[str, Any]) -> None:
        """Queues one notification for every configured receiver (none: nothing to do)."""
        if not self._urls:
            return
        key = uuid.uuid4().hex
        text = json.dumps({"id": key, **body}, ensure_ascii=False, separators=(",", ":"))
        now = _database_clock(self._postgres)
        await self._conn.execute(
            _INSERT.values(
                idempotency_key=key,
                url=bindparam("url"),
                event_type=event_type,
                body=storable(text),
                state=int(DeliveryState.PENDING),
                next_attempt_at=now,
                created_at=now,
            ),
            [{"url": url} for url in self._urls],
        )


class WebhookDeliveries:
    """What senders and admins do with queued deliveries, each in a transaction of its own."""

    def __init__(self, door: Door) -> None:
        self._door = door

    async def claim(self, limit: int, lease: timedelta) -> list[Delivery]:
        """Up to `limit` due rows, leased to the caller for `lease` (database clock)."""
        t = webhook_deliveries
        async with self._door.passage() as passage:
            conn = passage.connection
            postgres = conn.dialect.name == "postgresql"
            now = _database_clock(postgres)
            due = (
                select(t.c.id)
                .where(
                    t.c.state == int(DeliveryState.PENDING),
                    t.c.next_attempt_at <= now,
                    or_(t.c.lease_until.is_(None), t.c.lease_until <= now),
                )
                .order_by(t.c.id)
                .limit(limit)
            )
            if postgres:
                due = due.with_for_update(skip_locked=True)
            token = str(uuid.uuid4())
            rows = (
                await conn.execute(
                    update(t)
                    .where(t.c.id.in_(due.scalar_subquery()))
                    .values(
                        lease_until=_database_clock(postgres, _clock_offset(postgres, "lease")),
                        claim_token=token,
                        attempts=t.c.attempts + 1,
                    )
                    .returning(*t.c),
                    {"lease": _offset_value(postgres, lease)},
                )
            ).all()
            await passage.commit()
        return sorted((_delivery(r) for r in rows), key=lambda d: d.id)

    async def delivered(self, delivery: Delivery) -> bool:
        """Marks a claimed row delivered; False if the claim had lapsed to someone else."""
        t = webhook_deliveries
        async with self._door.passage() as passage:
            conn = passage.connection
            postgres = conn.dialect.name == "postgresql"
            done = await conn.execute(
                update(t)
                .where(t.c.id == delivery.id, t.c.claim_token == delivery.claim_token)
                .values(
                    state=int(DeliveryState.DELIVERED),
                    delivered_at=_database_clock(postgres),
                    lease_until=None,
                    claim_token=None,
                    last_error="",
                )
            )
            await passage.commit()
        return bool(done.rowcount)

    async def failed(self, delivery: Delivery, error: str, retry_in: timedelta | None) -> bool:
        """Records a failed attempt: retried after `retry_in`, or dead when None."""
        t = webhook_deliveries
        async with self._door.passage() as passage:
            conn = passage.connection
            postgres = conn.dialect.name == "postgresql"
            values: dict[str, Any] = {
                "lease_until": None,
                "claim_token": None,
                "last_error": storable(error[:ERROR_MAX]),
            }
            params: dict[str, Any] = {}
            if retry_in is None:
                values["state"] = int(DeliveryState.DEAD)
            else:
                values["next_attempt_at"] = _database_clock(
                    postgres, _clock_offset(postgres, "retry")
                )
                params["retry"] = _offset_value(postgres, retry_in)
            done = await conn.execute(
                update(t)
                .where(t.c.id == delivery.id, t.c.claim_token == delivery.claim_token)
                .values(**values),
                params,
            )
            await passage.commit()
        return bool(done.rowcount)

    async def page(self, state: DeliveryState | None, after_id: int, limit: int) -> list[Delivery]:
        """Deliveries in id order past `after_id`, of one state or all."""
        t = webhook_deliveries
        stmt = select(t).where(t.c.id > after_id).order_by(t.c.id).limit(limit)
        if state is not None:
            stmt = stmt.where(t.c.state == int(state))
        async with self._door.passage(readonly=True) as passage:
            rows = (await passage.connection.execute(stmt)).all()
        return [_delivery(r) for r in rows]
