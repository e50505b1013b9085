"""ListPendingDecisions replies put together from decisions serialized once per version.

A decision never changes at a version (every change writes the next one, and decisions
are never deleted), so its serialized form at (analysis_id, version) holds for every
caller, on every page, in every process. A page is then its items' bytes, each behind
its field tag and length, and the page token: the protobuf encoding of the reply,
which grpc sends as it is (the method is registered without a response serializer).
"""

from __future__ import annotations

from typing import Final

from hitl.v1 import decision_pb2

from hitl_grpc.api import convert
from hitl_grpc.domain.values import AnalysisId, Decision

# What the serialized decisions of one process may hold; the oldest go first beyond it.
RENDERED_BYTES_MAX: Final = 32 * 1024 * 1024

_FIELDS: Final = decision_pb2.ListPendingDecisionsResponse.DESCRIPTOR.fields_by_name
# Wire type 2 (length-delimited) for both fields: a message and a string.
_DECISION_TAG: Final = bytes([_FIELDS["decisions"].number << 3 | 2])
_TOKEN_TAG: Final = bytes([_FIELDS["next_page_token"].number << 3 | 2])


def _varint(n: int) -> bytes:
    """A length as protobuf's wire format writes it: seven bits a byte, low bits first."""
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def entry_bytes(item: bytes) -> int:
    """What one serialized decision adds to a reply: tag, length and body."""
    return len(_DECISION_TAG) + len(_varint(len(item))) + len(item)


def page_reply(items: list[bytes], next_page_token: str) -> bytes:
    """The serialized ListPendingDecisionsResponse of these serialized decisions."""
    parts: list[bytes] = []
    for item in items:
        parts += (_DECISION_TAG, _varint(len(item)), item)
    if next_page_token:
        token = next_page_token.encode()
        parts += (_TOKEN_TAG, _varint(len(token)), token)
    return b"".join(parts)


class RenderedDecisions:
    """Serialized decisions by (analysis_id, version), up to a bound in bytes."""

    def __init__(self, max_bytes: int = RENDERED_BYTES_MAX) -> None:
        self._max_bytes = max_bytes
        # Insertion order is age: an entry never changes, so the oldest goes first.
        self._by_key: dict[tuple[str, int], bytes] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, analysis_id: AnalysisId, version: int) -> bytes | None:
        """The decision at that version as serialized before, if it still is here."""
        found = self._by_key.get((analysis_id, version))
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def render(self, decision: Decision) -> bytes:
        """The decision serialized, kept for the next page that holds it at this version."""
        key = (decision.analysis_id, decision.version)
        found = self._by_key.get(key)
        if found is not None:
            return found
        encoded = convert.decision_to_proto(decision).SerializeToString()
        self._by_key[key] = encoded
        self._bytes += len(encoded)
        while self._bytes > self._max_bytes and len(self._by_key) > 1:
            oldest = next(iter(self._by_key))
            self._bytes -= len(self._by_key.pop(oldest))
        return encoded

    def __len__(self) -> int:
        return len(self._by_key)
