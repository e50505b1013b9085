"""Webhooks from outside: `hitl-grpc serve` posting to a loopback receiver that fails and
stalls, a server killed mid-delivery, and its successor finishing the job."""

from __future__ import annotations

import json
from pathlib import Path

from hitl.v1 import access_pb2, decision_pb2

from tests.blackbox.conftest import ServedFactory
from tests.blackbox.harness import Served
from tests.harness import bearer
from tests.webhook_receiver import running_receiver

SECRET = "blackbox-webhook-secret-" + "b" * 32


def test_each_key_is_accepted_once_across_an_outage_and_a_killed_server(
    make_served: ServedFactory, database_url: str, tmp_path: Path
) -> None:
    with running_receiver(SECRET) as receiver:
        env = {
            "HITL_WEBHOOK_URLS": receiver.url,
            "HITL_WEBHOOK_SECRET": SECRET,
            "HITL_WEBHOOK_TIMEOUT_S": "0.5",
            "HITL_WEBHOOK_BACKOFF_S": "0.05",
            "HITL_WEBHOOK_BACKOFF_MAX_S": "0.2",
            "HITL_WEBHOOK_POLL_S": "0.05",
        }
        receiver.mode = "fail"
        first = Served.start(database_url, tmp_path, **env)
        try:
            service = bearer(first.token(access_pb2.ROLE_SERVICE))
            for _ in range(3):
                first.submit(service, priority=decision_pb2.PRIORITY_CRITICAL)
            receiver.wait_for(lambda seen: len({r.key for r in seen}) == 3)
            keys = {r.key for r in receiver.seen}
            receiver.wait_for(lambda seen: all(sum(r.key == k for r in seen) >= 2 for k in keys))
            receiver.mode = "stall"
            receiver.wait_for(lambda seen: any(r.answer == 0 for r in seen))
        finally:
            first.proc.kill()  # a crash, mid-attempt: nothing is marked
            first.proc.wait()
        receiver.mode = "accept"
        second = make_served(**env)
        receiver.wait_for(lambda seen: {r.key for r in seen if r.answer == 200} == keys)

        # Each is marked delivered after its answer: asked again (a bounded number of
        # grpcurl runs) until all three are.
        delivered: list[dict[str, object]] = []
        for _ in range(100):
            listed = second.grpcurl(
                "hitl.v1.AuditService/ListWebhookDeliveries",
                token=second.admin_token(),
                data=json.dumps({"state": "WEBHOOK_DELIVERY_STATE_DELIVERED"}),
            )
            assert listed.returncode == 0, listed.stderr
            delivered = json.loads(listed.stdout).get("deliveries", [])
            if len(delivered) == len(keys):
                break
        assert {d["idempotency_key"] for d in delivered} == keys
        second.assert_alive()
    assert receiver.accepted() == dict.fromkeys(keys, 1)
    assert all(r.signed and r.event == "decision.critical_submitted" for r in receiver.seen)
