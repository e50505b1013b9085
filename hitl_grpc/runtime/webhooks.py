"""Sends queued webhook deliveries: signed, leased, retried with backoff, dead at the end.

Every replica runs a sender. Each step claims the due rows (store/webhooks.py: a lease,
SKIP LOCKED on PostgreSQL) and POSTs each body to its URL with these headers:

- `Idempotency-Key`: the notification's key, the same on every attempt and replica;
- `X-Hitl-Event`: its type (decision.critical_submitted, .sla_breached, .verdict);
- `X-Hitl-Timestamp`: Unix seconds of this attempt;
- `X-Hitl-Signature`: `v1=` + hex HMAC-SHA256 of `<timestamp>.<body>` with the secret.

A 2xx answer delivers it. Anything else (another status, a refused connection, no
answer within the timeout) schedules attempt n+1 after backoff * 2^(n-1), capped, times
a random factor in [0.5, 1) so replicas retrying one receiver spread out; after the last
attempt the delivery is dead, for an admin to see. Delivery is at least once: a replica
that dies mid-attempt leaves the row to be sent again once its lease lapses.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from datetime import timedelta
from typing import Final

import httpx

from hitl_grpc import tasks
from hitl_grpc.domain import errors
from hitl_grpc.domain.notifications import Delivery
from hitl_grpc.store.webhooks import WebhookDeliveries

log = logging.getLogger("hitl_grpc.runtime.webhooks")

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
EVENT_HEADER: Final = "X-Hitl-Event"
TIMESTAMP_HEADER: Final = "X-Hitl-Timestamp"
SIGNATURE_HEADER: Final = "X-Hitl-Signature"
# Deliveries one step claims and sends at once.
BATCH: Final = 20
# A lease outlasts the attempt it covers: twice its timeout, and the database calls
# around it. One that lapses anyway (a stalled database) means a second attempt, never
# a lost one: the late mark is refused, as its claim token is no longer the row's.
LEASE_MARGIN_S: Final = 2.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Hitl-Signature value of a body sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def backoff(attempts: int, base_s: float, cap_s: float) -> timedelta:
    """The wait after the `attempts`-th failed attempt: exponential, capped, jittered."""
    ceiling = min(cap_s, base_s * 2 ** min(attempts - 1, 60))
    return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))


class WebhookSender(tasks.Periodic):
    """Claims due deliveries every `poll_s` and sends them."""

    def __init__(
        self,
        deliveries: WebhookDeliveries,
        *,
        secret: str,
        timeout_s: float,
        max_attempts: int,
        backoff_s: float,
        backoff_max_s: float,
        poll_s: float,
    ) -> None:
        super().__init__(name="hitl-webhooks", interval_s=poll_s)
        self._deliveries = deliveries
        self._secret = secret
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._lease = timedelta(seconds=2 * timeout_s + LEASE_MARGIN_S)
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def stop(self) -> None:
        """Stops sending (an attempt in progress is retried later) and closes the client."""
        await super().stop()
        await self._client.aclose()

    async def step(self) -> None:
        """Sends every due delivery, a batch at a time; a database outage skips the step."""
        try:
            while True:
                claimed = await self._deliveries.claim(BATCH, self._lease)
                await asyncio.gather(*(self._send(d) for d in claimed))
                if len(claimed) < BATCH:
                    return
        except errors.Unavailable:
            log.warning("webhooks skipped: database unavailable")

    async def _send(self, delivery: Delivery) -> None:
        body = delivery.body.encode()
        sent_at = int(time.time())
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: delivery.idempotency_key,
            EVENT_HEADER: delivery.event_type,
            TIMESTAMP_HEADER: str(sent_at),
            SIGNATURE_HEADER: signature(self._secret, sent_at, body),
        }
        error = ""
        try:
            # One bound on the whole attempt: httpx's timeout is per phase.
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.post(delivery.url, content=body, headers=headers)
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except TimeoutError:
            error = f"no answer within {self._timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        try:
            if not error:
                await self._deliveries.delivered(delivery)
                return
            last = delivery.attempts >= self._max_attempts
            retry = (
                None if last else backoff(delivery.attempts, self._backoff_s, self._backoff_max_s)
            )
            await self._deliveries.failed(delivery, error, retry)
            log.warning(
                "webhook %s to %s failed (attempt %d%s): %s",
                delivery.idempotency_key,
                delivery.url,
                delivery.attempts,
                ", dead" if last else "",
                error,
            )
        except errors.Unavailable:
            # Unrecorded: the lease lapses and the delivery is attempted again.
            log.warning("webhook %s outcome not recorded: database unavailable", delivery.id)
