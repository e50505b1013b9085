"""Valid analyses to submit, from the generated contract alone: tests, the black-box tier
and bench/ build their requests here without importing a server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from hitl.v1 import decision_pb2


def ts(value: datetime) -> Timestamp:
    """A Timestamp for a datetime."""
    out = Timestamp()
    out.FromDatetime(value.astimezone(UTC))
    return out


def sample_request(
    analysis_id: str | None = None, **fields: Any
) -> decision_pb2.SubmitDecisionRequest:
    """A valid submission; keyword arguments override fields."""
    base: dict[str, Any] = {
        "analysis_id": analysis_id or f"an-{uuid.uuid4().hex}",
        "incident_id": "inc-1",
        "threat_level": "high",
        "source_ip": "203.0.113.7",
        "attributed_actor": "APT-Example",
        "confidence": 87.5,
        "iocs": ["evil.example", "198.51.100.9"],
        "ttps": ["T1059", "T1566.001"],
        "recommended_actions": [
            decision_pb2.Action(
                type=decision_pb2.ACTION_TYPE_BLOCK_IP, target="203.0.113.7", description="block"
            ),
            decision_pb2.Action(
                type=decision_pb2.ACTION_TYPE_QUARANTINE_SYSTEM, target="host-7", description=""
            ),
        ],
        "forensic_summary": "lateral movement observed",
        "priority": decision_pb2.PRIORITY_HIGH,
        "detected_at": ts(datetime.now(UTC) - timedelta(minutes=5)),
    }
    base.update(fields)
    return decision_pb2.SubmitDecisionRequest(**base)
