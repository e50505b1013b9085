"""Outgoing webhooks: signed, retried through outages, exactly one acceptance per key,
across a restart and with two replicas; dead letters for admins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from hitl.v1 import audit_pb2, decision_pb2

from hitl_grpc.config import ConfigError, Settings
from hitl_grpc.domain.values import Priority, Role
from hitl_grpc.runtime.webhooks import backoff
from tests.decisions_support import submit, wait_for_database_time, when
from tests.harness import Harness, ServerFactory
from tests.webhook_receiver import Received, Receiver, running_receiver

SECRET = "webhook-test-secret-" + "w" * 32
CRITICAL = decision_pb2.PRIORITY_CRITICAL


async def _settled(server: Harness, state: int, count: int) -> list[audit_pb2.WebhookDelivery]:
    """The deliveries in `state` once there are `count`: each is marked after its answer."""
    async with asyncio.timeout(10):
        while True:
            found = await _deliveries(server, state)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)  # stored state, which nothing signals; bounded above


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A loopback HTTP receiver for the test."""
    with running_receiver(SECRET) as found:
        yield found


def _settings(receiver: Receiver, **more: Any) -> dict[str, Any]:
    return {
        "webhook_urls": (receiver.url,),
        "webhook_secret": SECRET,
        "webhook_timeout_s": 0.5,
        "webhook_backoff_s": 0.05,
        "webhook_backoff_max_s": 0.2,
        "webhook_poll_s": 0.05,
        **more,
    }


async def _wait(receiver: Receiver, check: Callable[[list[Received]], bool]) -> None:
    await asyncio.to_thread(receiver.wait_for, check)


def _attempts(key: str) -> Callable[[list[Received]], int]:
    return lambda seen: sum(1 for r in seen if r.key == key)


async def _deliveries(server: Harness, state: int = 0) -> list[audit_pb2.WebhookDelivery]:
    admin = await server.as_role(Role.ADMIN)
    reply = await server.audit.ListWebhookDeliveries(
        audit_pb2.ListWebhookDeliveriesRequest(
            state=audit_pb2.WebhookDeliveryState.ValueType(state)
        ),
        metadata=admin,
        timeout=10,
    )
    return list(reply.deliveries)


async def test_each_key_is_accepted_once_across_an_outage_a_stall_and_a_restart(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    receiver.mode = "fail"
    async with make_server(**_settings(receiver)) as first:
        service = await first.as_role(Role.SERVICE)
        critical = [await submit(first, service, priority=CRITICAL) for _ in range(3)]
        await submit(first, service)  # HIGH: no notification
        # Refused, then retried: every notification seen at least twice while failing.
        await _wait(receiver, lambda seen: len({r.key for r in seen}) == 3)
        keys = {r.key for r in receiver.seen}
        await _wait(receiver, lambda seen: all(_attempts(k)(seen) >= 2 for k in keys))
        receiver.mode = "stall"
        await _wait(receiver, lambda seen: any(r.answer == 0 for r in seen))
    # The first server stopped mid-attempt; a new one takes over once its lease lapses.
    receiver.mode = "accept"
    async with make_server(**_settings(receiver)) as second:
        analyst = await second.as_role(Role.ANALYST)
        await second.decisions.MakeDecision(
            decision_pb2.MakeDecisionRequest(
                analysis_id=critical[0].analysis_id, status=decision_pb2.DECISION_STATUS_APPROVED
            ),
            metadata=analyst,
            timeout=10,
        )
        await _wait(receiver, lambda seen: len({r.key for r in seen if r.answer == 200}) == 4)
        delivered = await _settled(second, audit_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED, 4)
        assert len(delivered) == 4
        assert await _deliveries(second, audit_pb2.WEBHOOK_DELIVERY_STATE_PENDING) == []

    assert set(receiver.accepted().values()) == {1}
    assert all(r.signed for r in receiver.seen)
    accepted = {r.key: r for r in receiver.seen if r.answer == 200}
    events = sorted(r.event for r in accepted.values())
    assert events == ["decision.critical_submitted"] * 3 + ["decision.verdict"]
    assert {r.body["decision"]["analysis_id"] for r in accepted.values()} == {
        d.analysis_id for d in critical
    }
    assert all(r.body["id"] == key for key, r in accepted.items())
    by_key = {d.idempotency_key: d for d in delivered}
    assert all(by_key[k].attempts >= 3 for k in keys)  # failed, failed, stalled, accepted


async def test_two_replicas_accept_each_key_once(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    async with (
        make_server(**_settings(receiver)) as one,
        make_server(**_settings(receiver)) as two,
    ):
        tokens = [await one.as_role(Role.SERVICE), await two.as_role(Role.SERVICE)]
        await asyncio.gather(
            *(
                submit(server, token, priority=CRITICAL)
                for server, token in ((one, tokens[0]), (two, tokens[1]))
                for _ in range(6)
            )
        )
        await _wait(receiver, lambda seen: len({r.key for r in seen}) == 12)
        delivered = await _settled(one, audit_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED, 12)
        assert len(delivered) == 12
    assert receiver.accepted() == {d.idempotency_key: 1 for d in delivered}
    assert len(receiver.seen) == 12


async def test_a_delivery_that_fails_every_attempt_is_dead_for_admins(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    receiver.mode = "fail"
    async with make_server(**_settings(receiver, webhook_max_attempts=2)) as server:
        service = await server.as_role(Role.SERVICE)
        await submit(server, service, priority=CRITICAL)
        await _wait(receiver, lambda seen: len(seen) == 2)
        [letter] = await _settled(server, audit_pb2.WEBHOOK_DELIVERY_STATE_DEAD, 1)
        assert (letter.attempts, letter.last_error) == (2, "HTTP 503")
        assert letter.event_type == "decision.critical_submitted"
        analyst = await server.as_role(Role.ANALYST)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await server.audit.ListWebhookDeliveries(
                audit_pb2.ListWebhookDeliveriesRequest(), metadata=analyst, timeout=10
            )
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert len(receiver.seen) == 2


async def test_without_a_url_nothing_is_queued(server: Harness) -> None:
    service = await server.as_role(Role.SERVICE)
    await submit(server, service, priority=CRITICAL)
    assert server.running.webhooks is None
    assert await _deliveries(server) == []


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    waits = [backoff(n, 1.0, 10.0) for n in range(1, 8)]
    ceilings = [1, 2, 4, 8, 10, 10, 10]
    assert all(
        timedelta(seconds=c / 2) <= w <= timedelta(seconds=c)
        for w, c in zip(waits, ceilings, strict=True)
    )


def test_webhook_urls_need_a_secret_and_must_be_http() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HITL_WEBHOOK_URLS": "https://soar.example/hook"})
    assert str(caught.value).startswith("HITL_WEBHOOK_SECRET: required")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"HITL_WEBHOOK_URLS": "ftp://x", "HITL_WEBHOOK_SECRET": SECRET})
    assert "HITL_WEBHOOK_URLS: must be an http:// or https:// URL" in str(caught.value)
    settings = Settings.from_env(
        {
            "HITL_WEBHOOK_URLS": "https://a.example/h, http://127.0.0.1:9/h",
            "HITL_WEBHOOK_SECRET": SECRET,
        }
    )
    assert settings.webhook_urls == ("https://a.example/h", "http://127.0.0.1:9/h")


async def test_deliveries_page_oldest_first_and_refuse_bad_requests(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    receiver.mode = "fail"
    # A sender that waits: the rows stay pending while the test pages through them.
    async with make_server(**_settings(receiver, webhook_poll_s=3600)) as server:
        await server.running.webhooks.stop()  # type: ignore[union-attr]  # set: URLs given
        service = await server.as_role(Role.SERVICE)
        for _ in range(3):
            await submit(server, service, priority=CRITICAL)
        admin = await server.as_role(Role.ADMIN)
        seen: list[int] = []
        token = ""
        while True:
            reply = await server.audit.ListWebhookDeliveries(
                audit_pb2.ListWebhookDeliveriesRequest(page_size=2, page_token=token),
                metadata=admin,
                timeout=10,
            )
            seen.extend(d.id for d in reply.deliveries)
            token = reply.next_page_token
            if not token:
                break
        assert len(seen) == 3 and seen == sorted(seen)
        for bad in (
            audit_pb2.ListWebhookDeliveriesRequest(page_token="forged"),
            audit_pb2.ListWebhookDeliveriesRequest(page_size=-1),
            audit_pb2.ListWebhookDeliveriesRequest(
                state=audit_pb2.WebhookDeliveryState.ValueType(9)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await server.audit.ListWebhookDeliveries(bad, metadata=admin, timeout=10)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert receiver.seen == []


async def test_an_sla_breach_is_notified_once(
    make_server: ServerFactory, receiver: Receiver
) -> None:
    sla = {**Settings().sla, Priority.HIGH: timedelta(seconds=2)}
    async with make_server(**_settings(receiver), sla=sla, sweep_interval_s=3600) as server:
        service = await server.as_role(Role.SERVICE)
        late = await submit(server, service)  # HIGH: its submission notifies nobody
        await wait_for_database_time(server, when(late.sla_deadline))
        assert (await server.running.sweeper.sweep_once()).escalated == 1
        await _wait(receiver, lambda seen: len(seen) == 1)
        [breach] = receiver.seen
        assert breach.event == "decision.sla_breached" and breach.signed
        assert breach.body["decision"]["analysis_id"] == late.analysis_id
        assert breach.body["decision"]["status"] == "ESCALATED"
        assert (await server.running.sweeper.sweep_once()).escalated == 0
        await _settled(server, audit_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED, 1)
    assert receiver.accepted() == {breach.key: 1}


def test_production_refuses_plaintext_webhooks_off_loopback() -> None:
    production = {
        "HITL_ENV": "production",
        "HITL_JWT_SECRET": "s" * 40,
        "HITL_WEBHOOK_SECRET": SECRET,
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**production, "HITL_WEBHOOK_URLS": "http://soar.example/hook"})
    assert str(caught.value) == (
        "HITL_WEBHOOK_URLS: production refuses plaintext webhooks to "
        "http://soar.example/hook: use https://"
    )
    allowed = "https://soar.example/hook,http://127.0.0.1:8080/hook"
    assert Settings.from_env({**production, "HITL_WEBHOOK_URLS": allowed}).webhook_urls == (
        "https://soar.example/hook",
        "http://127.0.0.1:8080/hook",
    )
