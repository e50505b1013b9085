"""Hostile inputs get INVALID_ARGUMENT naming the field (or the normal failure), never INTERNAL."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from hitl.v1 import access_pb2, audit_pb2, auth_pb2, decision_pb2

from hitl_grpc.domain.values import USERNAME_MAX, Role
from tests.audit_support import audit_rows
from tests.decisions_support import violations
from tests.harness import PASSWORD, Harness
from tests.signin import rpc_error
from tests.watching import next_of, submit_request

# Accepted by GetDecision as they are: no trimming, no normalization.
STORED_IDS = ("padded ", " leading", "ünïcödé-ид-🛡️")
# Refused by every RPC that takes an analysis id, with the same violation.
BAD_IDS = ("", "x" * 129, "nul\x00inside", "tab\tinside")


async def _outcome(call: object) -> tuple[grpc.StatusCode, dict[str, str]]:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        found = violations(err) if err.code() is grpc.StatusCode.INVALID_ARGUMENT else {}
        return err.code(), found
    return grpc.StatusCode.OK, {}


async def _first_watch(stream: AsyncIterator[decision_pb2.WatchDecisionResponse]) -> None:
    await next_of(stream)


async def test_watch_decision_and_get_decision_treat_ids_alike(server: Harness) -> None:
    candi = await server.as_role(Role.SERVICE)
    for analysis_id in STORED_IDS:
        await server.decisions.SubmitDecision(
            submit_request(analysis_id), metadata=candi, timeout=10
        )
    # "padded" (trimmed) was never submitted: both must say NOT_FOUND.
    for analysis_id in (*STORED_IDS, "padded", *BAD_IDS):
        got = await _outcome(
            server.decisions.GetDecision(
                decision_pb2.GetDecisionRequest(analysis_id=analysis_id), metadata=candi, timeout=10
            )
        )
        stream = server.decisions.WatchDecision(
            decision_pb2.WatchDecisionRequest(analysis_id=analysis_id), metadata=candi, timeout=10
        )
        watched = await _outcome(_first_watch(aiter(stream)))
        stream.cancel()
        assert watched == got, repr(analysis_id)
        if analysis_id in BAD_IDS:
            assert got[0] is grpc.StatusCode.INVALID_ARGUMENT and "analysis_id" in got[1]
        elif analysis_id == "padded":
            assert got[0] is grpc.StatusCode.NOT_FOUND
        else:
            assert got[0] is grpc.StatusCode.OK, repr(analysis_id)


OUT_OF_RANGE_TIMES = (
    Timestamp(seconds=2**62),
    Timestamp(seconds=-(2**62)),
    Timestamp(seconds=253_402_300_800),  # 10000-01-01: one past what datetime holds
    Timestamp(seconds=-62_135_596_801),  # one second before 0001-01-01
    Timestamp(seconds=0, nanos=1_000_000_000),
    Timestamp(seconds=0, nanos=-1),
)


@pytest.mark.parametrize("name", ["since", "until"])
async def test_out_of_range_audit_times_are_invalid_argument(server: Harness, name: str) -> None:
    admin = await server.as_role(Role.ADMIN)
    for when in OUT_OF_RANGE_TIMES:
        request = audit_pb2.ListAuditEventsRequest()
        getattr(request, name).CopyFrom(when)
        error = await rpc_error(server.audit.ListAuditEvents(request, metadata=admin, timeout=10))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (when, error.details())
        assert name in violations(error), when


async def test_audit_times_at_the_edges_of_what_is_representable_are_answered(
    server: Harness,
) -> None:
    admin = await server.as_role(Role.ADMIN)
    earliest = Timestamp(seconds=-62_135_596_800)  # 0001-01-01T00:00:00Z
    latest = Timestamp(seconds=253_402_300_799, nanos=999_999_999)  # 9999-12-31T23:59:59.999Z
    everything = await server.audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(since=earliest, until=latest, page_size=1000),
        metadata=admin,
        timeout=10,
    )
    assert everything.events
    nothing = await server.audit.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(since=latest), metadata=admin, timeout=10
    )
    assert not nothing.events


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


FORGED_TOKENS = (
    _token(b"[" * 100_000 + b"]" * 100_000),
    _token(b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    _token("a:²³".encode()),
    _token("a:٣".encode()),
    _token(b"a:" + b"9" * 30),
    _token(b"a:" + b"9" * 5_000),
    _token(b"a:-1"),
    _token(b"a:0"),
    _token(b"a:\x00"),
    _token(b"\xff\xfe"),
    "not base64 at all!",
    "a" * 10_001,
)


async def test_forged_audit_page_tokens_are_invalid_argument(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    for token in FORGED_TOKENS:
        error = await rpc_error(
            server.audit.ListAuditEvents(
                audit_pb2.ListAuditEventsRequest(page_token=token), metadata=admin, timeout=10
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (token[:40], error.details())
        assert "page_token" in violations(error), token[:40]


async def test_forged_user_page_tokens_are_invalid_argument(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    for token in (_token(b"u:\x00"), _token(b"u:a\x00b"), _token(b"a:1"), "%%%"):
        error = await rpc_error(
            server.auth.ListUsers(
                auth_pb2.ListUsersRequest(page_token=token), metadata=admin, timeout=10
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (token, error.details())
        assert "page_token" in violations(error), token


# Each is at most USERNAME_MAX characters as typed, but its case-folded key is longer.
FOLDING_NAMES = ("ß" * USERNAME_MAX, "ﬃ" * 60, "x" + "ŉ" * 100, "İ" * 100)


async def test_usernames_whose_folded_form_is_too_long_are_refused_at_create(
    server: Harness,
) -> None:
    admin = await server.as_role(Role.ADMIN)
    for name in FOLDING_NAMES:
        error = await rpc_error(
            server.auth.CreateUser(
                auth_pb2.CreateUserRequest(
                    username=name, password=PASSWORD, role=access_pb2.ROLE_ANALYST
                ),
                metadata=admin,
                timeout=10,
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (name[:8], error.details())
        assert "username" in violations(error), name[:8]
    # A name that folds to exactly the limit still fits the stored form.
    fits = "ß" * (USERNAME_MAX // 2)
    created = await server.auth.CreateUser(
        auth_pb2.CreateUserRequest(username=fits, password=PASSWORD, role=access_pb2.ROLE_ANALYST),
        metadata=admin,
        timeout=10,
    )
    assert created.user.username == fits
    assert (await server.login("SS" * (USERNAME_MAX // 2))).tokens.access_token


async def test_logging_in_with_an_overlong_folded_name_is_a_failed_login(server: Harness) -> None:
    for name in (*FOLDING_NAMES, "ß" * 10_000, "x" * 10_000):
        error = await rpc_error(server.login(name))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, (name[:8], error.details())


async def test_forged_queue_page_tokens_are_invalid_argument(server: Harness) -> None:
    analyst = await server.as_role(Role.ANALYST)
    for token in FORGED_TOKENS:
        error = await rpc_error(
            server.decisions.ListPendingDecisions(
                decision_pb2.ListPendingDecisionsRequest(page_token=token),
                metadata=analyst,
                timeout=10,
            )
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (token[:40], error.details())
        assert "page_token" in violations(error), token[:40]


async def test_nul_in_a_login_name_is_a_failed_login_and_is_audited(server: Harness) -> None:
    for name in ("ab\x00c", "\x00", "admin\x00"):
        error = await rpc_error(server.login(name))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED, (name, error.details())
    failed = await audit_rows(server, "auth.login")
    assert {r.actor for r in failed} >= {"ab\ufffdc", "\ufffd", "admin\ufffd"}


async def test_nul_in_an_audit_filter_is_invalid_argument(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    for name in ("actor", "kind", "target"):
        request = audit_pb2.ListAuditEventsRequest()
        setattr(request, name, "a\x00b")
        error = await rpc_error(server.audit.ListAuditEvents(request, metadata=admin, timeout=10))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        assert name in violations(error)


async def test_nul_in_a_user_id_is_not_found(server: Harness) -> None:
    admin = await server.as_role(Role.ADMIN)
    error = await rpc_error(
        server.auth.UpdateUser(
            auth_pb2.UpdateUserRequest(
                user_id="a\x00b", full_name="x", update_mask=FieldMask(paths=["full_name"])
            ),
            metadata=admin,
            timeout=10,
        )
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND, error.details()
