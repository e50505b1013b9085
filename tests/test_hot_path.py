"""The access check folded into the submit's own statement: every guarantee of two steps.

On PostgreSQL a submit by a caller the process has seen before is one statement (store/
hot.py): the account check, the decision, its event and its audit row. On SQLite the same
calls take the ordinary path; both must answer alike.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from hitl.v1 import auth_pb2, decision_pb2

from hitl_grpc.accounts.users import UserUpdate
from hitl_grpc.domain.values import AuditOutcome, AuditRecord, Role, User, UserId
from hitl_grpc.store import audit_chain
from hitl_grpc.store.audit import audit_row
from tests.audit_support import audit_rows
from tests.decisions_support import sample_request, scalar, submit, ts, violations
from tests.harness import Harness, Metadata, ServerFactory, bearer
from tests.signin import rpc_error

SUBMIT = "/hitl.v1.DecisionService/SubmitDecision"


async def _signed_in(server: Harness, role: Role = Role.SERVICE) -> tuple[User, Metadata]:
    """A new account and its token, already seen by the server (its name is remembered)."""
    user = await server.create_user(role)
    meta = bearer((await server.login(user.username)).tokens.access_token)
    await server.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=meta, timeout=10)
    return user, meta


def _folded(server: Harness, backend: str, user: User) -> None:
    """The next submit of `user` takes the one-statement path on PostgreSQL, none on SQLite."""
    assert server.running.accounts.sessions.remembers(user.id) is (backend == "postgres")


async def _nothing_stored(server: Harness, analysis_id: str) -> None:
    assert (
        await scalar(server, "SELECT count(*) FROM decisions WHERE analysis_id = :a", a=analysis_id)
        == 0
    )
    assert not await audit_rows(server, "decision.submit", analysis_id)


def _message(read: object) -> decision_pb2.WatchPendingResponse:
    assert isinstance(read, decision_pb2.WatchPendingResponse), read
    return read


async def _update(server: Harness, user_id: UserId, change: UserUpdate) -> None:
    await server.running.accounts.users.update(user_id, change, actor="test", peer="test")


async def test_a_submit_is_stored_with_its_event_and_a_verifying_audit_row(
    server: Harness, backend: str
) -> None:
    user, meta = await _signed_in(server)
    _folded(server, backend, user)
    watcher = await server.as_role(Role.ANALYST)
    stream = server.decisions.WatchPending(decision_pb2.WatchPendingRequest(), metadata=watcher)
    while not _message(await stream.read()).HasField("snapshot_complete"):
        pass
    decision = await submit(server, meta, "hot-1", forensic_summary="résumé ✓ \u0101")
    assert decision.submitted_by == user.username
    assert decision.version == 1
    # The event carries the decision as stored, its database-stamped times included.
    while not (message := _message(await stream.read())).HasField("added"):
        pass
    stream.cancel()
    event = message
    assert event.added.analysis_id == "hot-1"
    assert event.added.created_at == decision.created_at
    assert event.added.sla_deadline == decision.sla_deadline
    assert event.added == decision
    assert event.added.forensic_summary == "résumé ✓ \u0101"
    (row,) = await audit_rows(server, "decision.submit", "hot-1")
    assert row.actor == user.username
    assert row.details == {"from": "", "to": "PENDING", "version": "1"}
    assert row.time == decision.created_at.ToDatetime(tzinfo=UTC)
    report = await audit_chain.verify(server.running.engine)
    assert report.ok, report.breaks


async def test_every_field_is_stored_as_submitted_whatever_its_text(
    server: Harness, backend: str
) -> None:
    """The row comes from the event's JSON payload: escapes, non-BMP text, a float and a
    literal of a stamped key inside a value all arrive in their columns unchanged."""
    user, meta = await _signed_in(server)
    _folded(server, backend, user)
    awkward = 'quote " backslash \\ tab\t \U0001f512 \u202e rtl "created_at":null'
    request = sample_request(
        "hot-text",
        incident_id="inc-\u00e9\U0001f600",
        attributed_actor=awkward,
        forensic_summary=awkward * 3,
        confidence=0.1 + 0.2,
        iocs=['"created_at":null', "\\x41", "\u0101"],
        ttps=["T1059"],
        expires_at=ts(datetime.now(UTC) + timedelta(hours=2)),
    )
    submitted = await server.decisions.SubmitDecision(request, metadata=meta, timeout=10)
    stored = await server.decisions.GetDecision(
        decision_pb2.GetDecisionRequest(analysis_id="hot-text"), metadata=meta, timeout=10
    )
    assert stored.decision == submitted.decision
    for field in request.DESCRIPTOR.fields:
        assert getattr(stored.decision, field.name) == getattr(request, field.name), field.name
    assert stored.decision.action_verdicts == submitted.decision.action_verdicts
    assert len(stored.decision.action_verdicts) == len(request.recommended_actions)


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (UserUpdate(active=False), grpc.StatusCode.PERMISSION_DENIED, "account is deactivated"),
        (UserUpdate(role=Role.VIEWER), grpc.StatusCode.PERMISSION_DENIED, "role VIEWER may not"),
    ],
)
async def test_an_account_change_refuses_the_next_submit_and_writes_nothing(
    server: Harness, backend: str, change: UserUpdate, code: grpc.StatusCode, message: str
) -> None:
    user, meta = await _signed_in(server)
    await submit(server, meta, "before-change")
    _folded(server, backend, user)
    await _update(server, user.id, change)
    error = await rpc_error(submit(server, meta, "after-change"))
    assert error.code() is code
    assert message in (error.details() or "")
    await _nothing_stored(server, "after-change")


async def test_a_logged_out_session_refuses_the_next_submit(server: Harness, backend: str) -> None:
    user, meta = await _signed_in(server)
    _folded(server, backend, user)
    await server.auth.Logout(auth_pb2.LogoutRequest(), metadata=meta, timeout=10)
    error = await rpc_error(submit(server, meta, "after-logout"))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "session ended" in (error.details() or "")
    await _nothing_stored(server, "after-logout")


async def test_a_resubmit_a_conflict_and_a_past_expiry_answer_as_before(
    server: Harness, backend: str
) -> None:
    user, meta = await _signed_in(server)
    _folded(server, backend, user)
    request = sample_request("again")
    first = await server.decisions.SubmitDecision(request, metadata=meta, timeout=10)
    again = await server.decisions.SubmitDecision(request, metadata=meta, timeout=10)
    assert first.created and not again.created
    assert again.decision == first.decision
    other = sample_request("again", forensic_summary="another payload")
    error = await rpc_error(server.decisions.SubmitDecision(other, metadata=meta, timeout=10))
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    past = datetime.now(UTC) - timedelta(seconds=5)
    late = sample_request("late", expires_at=ts(past), detected_at=ts(past - timedelta(minutes=1)))
    error = await rpc_error(server.decisions.SubmitDecision(late, metadata=meta, timeout=10))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "expires_at" in violations(error)
    await _nothing_stored(server, "late")
    assert len(await audit_rows(server, "decision.submit", "again")) == 1


async def test_another_replica_checks_the_account_on_the_next_call(
    make_server: ServerFactory, server: Harness, backend: str
) -> None:
    user, meta = await _signed_in(server)
    _folded(server, backend, user)
    async with make_server() as replica:
        # The replica has not seen the caller yet: its first call checks apart, then folds.
        await submit(replica, meta, "on-replica")
        assert replica.running.accounts.sessions.remembers(user.id) is (backend == "postgres")
        await _update(server, user.id, UserUpdate(active=False))
        error = await rpc_error(submit(replica, meta, "after-deactivation"))
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED
        await _nothing_stored(server, "after-deactivation")


def test_the_digest_parts_around_the_time_give_the_digest() -> None:
    moment = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)
    for details in ({}, {"from": "", "to": "PENDING"}, {"ключ": '值 \u0000 "q" \\'}):
        row = audit_row(
            AuditRecord(
                time=moment,
                actor='ånalyst "x"',
                kind="decision.submit",
                target="id-1",
                peer="ipv6:[::1]:1",
                outcome=AuditOutcome.SUCCESS,
                details=details,
                request_id="req-1",
            )
        )
        head, tail = audit_chain.digest_parts(row)
        text = head + audit_chain.canonical_time(moment) + tail
        assert hashlib.sha256(text.encode("ascii")).hexdigest() == row["digest"]


async def _page(
    server: Harness, meta: Metadata, **fields: object
) -> decision_pb2.ListPendingDecisionsResponse:
    request = decision_pb2.ListPendingDecisionsRequest(**fields)  # type: ignore[arg-type]
    return await server.decisions.ListPendingDecisions(request, metadata=meta, timeout=10)


async def test_a_page_read_again_is_one_statement_and_shows_each_change(
    server: Harness, backend: str
) -> None:
    service = await server.as_role(Role.SERVICE)
    for n in range(3):
        await submit(server, service, f"page-{n}")
    user, meta = await _signed_in(server, Role.ANALYST)
    _folded(server, backend, user)
    first = await _page(server, meta)
    hot, rendered = server.running.hot, server.running.rendered
    assert rendered is not None
    executed = dict(hot.executed) if hot else {}
    hits = rendered.hits
    again = await _page(server, meta)
    assert again == first
    # Every decision already serialized at its version: none is decoded or encoded again.
    assert rendered.hits == hits + 3
    if hot is not None:
        # The check and the page's keys in one statement.
        assert hot.executed - Counter(executed) == Counter({"page": 1})
    # A claim is a new version: the next page shows it, not the serialization of before.
    claim = decision_pb2.ClaimDecisionRequest(analysis_id="page-1")
    await server.decisions.ClaimDecision(claim, metadata=meta, timeout=10)
    after = await _page(server, meta)
    (claimed,) = [d for d in after.decisions if d.analysis_id == "page-1"]
    assert claimed.claimed_by == user.username
    assert claimed.version == 2
    assert [d.analysis_id for d in after.decisions] == [d.analysis_id for d in first.decisions]


async def test_pages_through_the_folded_read_walk_the_queue_once(
    server: Harness, backend: str
) -> None:
    service = await server.as_role(Role.SERVICE)
    priorities = [decision_pb2.PRIORITY_HIGH, decision_pb2.PRIORITY_LOW]
    for n in range(7):
        await submit(server, service, f"walk-{n}", priority=priorities[n % 2])
    user, meta = await _signed_in(server, Role.ANALYST)
    _folded(server, backend, user)
    for _ in range(2):  # cold, then every decision already serialized
        seen: list[str] = []
        token = ""
        while True:
            page = await _page(
                server, meta, page_size=2, page_token=token, priorities=[priorities[1]]
            )
            seen += [d.analysis_id for d in page.decisions]
            assert all(d.priority == priorities[1] for d in page.decisions)
            token = page.next_page_token
            if not token:
                break
        assert seen == ["walk-1", "walk-3", "walk-5"]


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (UserUpdate(active=False), grpc.StatusCode.PERMISSION_DENIED, "account is deactivated"),
        (UserUpdate(role=Role.SERVICE), grpc.StatusCode.PERMISSION_DENIED, "role SERVICE may not"),
    ],
)
async def test_an_account_change_refuses_the_next_page(
    server: Harness, backend: str, change: UserUpdate, code: grpc.StatusCode, message: str
) -> None:
    service = await server.as_role(Role.SERVICE)
    await submit(server, service, "seen")
    user, meta = await _signed_in(server, Role.ANALYST)
    assert len((await _page(server, meta)).decisions) == 1
    _folded(server, backend, user)
    await _update(server, user.id, change)
    error = await rpc_error(_page(server, meta))
    assert error.code() is code
    assert message in (error.details() or "")


async def test_a_logged_out_session_refuses_the_next_page(server: Harness, backend: str) -> None:
    user, meta = await _signed_in(server, Role.ANALYST)
    await _page(server, meta)
    _folded(server, backend, user)
    await server.auth.Logout(auth_pb2.LogoutRequest(), metadata=meta, timeout=10)
    error = await rpc_error(_page(server, meta))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "session ended" in (error.details() or "")
