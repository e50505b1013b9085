"""Times cross the wire exactly."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hitl_grpc.api.convert import from_timestamp, timestamp


@pytest.mark.parametrize(
    "value",
    [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 11, 24, 6, 16, 34, 123456, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1900, 2, 28, 12, 0, 0, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 29, 2, 30, 0, 500000, tzinfo=timezone(timedelta(hours=-7))),
    ],
)
def test_timestamp_matches_protobuf_and_round_trips(value: datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value.astimezone(UTC))
    ours = timestamp(value)
    assert ours == expected
    assert ours is not None
    assert from_timestamp(ours) == value


def test_missing_time_leaves_the_field_unset() -> None:
    assert timestamp(None) is None
