"""HitlClient with a kept session (the CLI's file), and the calls the shell commands use."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import grpc
import pyotp
import pytest
from hitl.v1 import access_pb2, auth_pb2, decision_pb2

from hitl_grpc.cli import session
from hitl_grpc.client import HitlClient, HitlClientError
from hitl_grpc.domain.values import Role
from tests.harness import PASSWORD, Harness, ServerFactory
from tests.watching import next_of, submit_request


def _store(server: Harness, tmp_path: Path, username: str) -> session.FileTokens:
    conn = session.Connection(server.running.address)
    return session.FileTokens(tmp_path / "hitl-grpc" / "session.json", conn, username)


async def _signed_in_file(server: Harness, tmp_path: Path, role: Role) -> session.FileTokens:
    """A session file as `hitl-grpc login` leaves it."""
    user = await server.create_user(role)
    store = _store(server, tmp_path, user.username)
    async with HitlClient(
        server.running.address, username=user.username, password=PASSWORD, store=store
    ) as client:
        await client.login()
    return store


async def test_a_kept_session_is_renewed_and_each_rotation_is_kept(
    server: Harness, tmp_path: Path
) -> None:
    store = await _signed_in_file(server, tmp_path, Role.ANALYST)
    first = store.load()
    assert first is not None
    async with HitlClient(server.running.address, store=store) as client:
        server.clock.advance(server.running.settings.access_token_ttl + timedelta(minutes=1))
        me = await client.current_user()
        second = store.load()
        assert second is not None and second.refresh_token != first.refresh_token
        assert client.tokens == second
    assert me.role == access_pb2.ROLE_ANALYST


async def test_a_rotation_by_another_process_is_picked_up_not_replayed(
    server: Harness, tmp_path: Path
) -> None:
    store = await _signed_in_file(server, tmp_path, Role.ANALYST)
    ttl = server.running.settings.access_token_ttl + timedelta(minutes=1)
    async with (
        HitlClient(server.running.address, store=store) as one,
        HitlClient(server.running.address, store=store) as two,
    ):
        await one.current_user()
        await two.current_user()  # both hold the same pair now
        server.clock.advance(ttl)
        await one.current_user()  # rotates and keeps the new pair
        server.clock.advance(ttl)
        # `two` reads the file before renewing: it renews the pair `one` kept, and the
        # server sees no replay (which would end the session for both).
        await two.current_user()
        server.clock.advance(ttl)
        await one.current_user()
    kept = store.load()
    assert kept is not None


async def test_a_replayed_kept_token_ends_the_session_with_unauthenticated(
    server: Harness, tmp_path: Path
) -> None:
    store = await _signed_in_file(server, tmp_path, Role.VIEWER)
    stale = store.load()
    assert stale is not None
    async with HitlClient(server.running.address, store=store) as client:
        server.clock.advance(server.running.settings.access_token_ttl + timedelta(minutes=1))
        await client.current_user()
    store.save(stale)  # a backup of the file put back
    async with HitlClient(server.running.address, store=store) as client:
        with pytest.raises(HitlClientError) as caught:
            await client.current_user()
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "session expired or revoked" in caught.value.message


async def test_logout_revokes_the_refresh_token(server: Harness, tmp_path: Path) -> None:
    store = await _signed_in_file(server, tmp_path, Role.ANALYST)
    async with HitlClient(server.running.address, store=store) as client:
        await client.logout()
    kept = store.load()
    assert kept is not None
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.auth.RefreshToken(
            auth_pb2.RefreshTokenRequest(refresh_token=kept.refresh_token), timeout=10
        )
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_watch_decision_yields_each_state_until_the_verdict(server: Harness) -> None:
    candi = await server.create_user(Role.SERVICE)
    ana = await server.create_user(Role.ANALYST)
    async with (
        HitlClient(server.running.address, username=candi.username, password=PASSWORD) as svc,
        HitlClient(server.running.address, username=ana.username, password=PASSWORD) as analyst,
    ):
        submitted = (await svc.submit_decision(submit_request())).decision
        states = aiter(svc.watch_decision(submitted.analysis_id))
        assert (await next_of(states)).status == decision_pb2.DECISION_STATUS_PENDING
        await analyst.claim_decision(submitted.analysis_id)
        assert (await next_of(states)).status == decision_pb2.DECISION_STATUS_IN_REVIEW
        await analyst.approve(submitted.analysis_id)
        final = await next_of(states)
        assert final.status == decision_pb2.DECISION_STATUS_APPROVED
        with pytest.raises(StopAsyncIteration):
            await next_of(states)


async def test_the_admin_calls_change_only_what_they_name(server: Harness) -> None:
    async with HitlClient(
        server.running.address, username="admin", password="bootstrap-password-for-tests"
    ) as admin:
        made = await admin.create_user(
            "dana", PASSWORD, access_pb2.ROLE_ANALYST, email="dana@example.org"
        )
        assert (made.username, made.role, made.email) == (
            "dana",
            access_pb2.ROLE_ANALYST,
            "dana@example.org",
        )
        names = [u.username async for u in admin.list_users(page_size=1)]
        assert names == ["admin", "dana"]
        viewer = await admin.update_user(made.id, role=access_pb2.ROLE_VIEWER)
        assert (viewer.role, viewer.email, viewer.active) == (
            access_pb2.ROLE_VIEWER,
            "dana@example.org",
            True,
        )
        off = await admin.update_user(made.id, active=False)
        assert not off.active and off.role == access_pb2.ROLE_VIEWER
        assert (await admin.unlock_user("DANA")).id == made.id
        assert not (await admin.reset_user_mfa(made.id)).mfa_enabled
        kinds = [e.kind async for e in admin.list_audit_events(target="dana", page_size=1)]
        # Newest first, one page at a time.
        assert kinds == [
            "user.mfa_reset",
            "user.unlocked",
            "user.updated",
            "user.updated",
            "user.created",
        ]


async def test_mfa_setup_carries_the_configured_issuer(make_server: ServerFactory) -> None:
    async with make_server(mfa_issuer="hitl-grpc staging") as server:
        user = await server.create_user(Role.ANALYST)
        async with HitlClient(
            server.running.address, username=user.username, password=PASSWORD
        ) as client:
            setup = await client.setup_mfa(PASSWORD)
            assert "issuer=hitl-grpc%20staging" in setup.otpauth_uri
            assert len(setup.backup_codes) == 10
            code = pyotp.TOTP(setup.secret).at(server.clock.now())
            assert (await client.confirm_mfa(code)).mfa_enabled


async def test_a_lost_server_keeps_the_session_for_the_next_try(
    server: Harness, tmp_path: Path
) -> None:
    store = await _signed_in_file(server, tmp_path, Role.ANALYST)
    kept = store.load()
    assert kept is not None
    conn = session.Connection("127.0.0.1:1")
    elsewhere = session.FileTokens(tmp_path / "hitl-grpc" / "session.json", conn, "x")
    # Another server's address: the file is not this server's session.
    assert elsewhere.load() is None
    server.clock.advance(server.running.settings.access_token_ttl + timedelta(minutes=1))
    unreachable = HitlClient("127.0.0.1:1", store=store, timeout_s=2)
    async with unreachable:
        with pytest.raises(HitlClientError) as caught:
            await asyncio.wait_for(unreachable.current_user(), 30)
    assert caught.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert store.load() == kept


async def test_release_escalate_and_verdicts_are_fenced_by_the_lease_epoch(
    server: Harness,
) -> None:
    candi = await server.create_user(Role.SERVICE)
    ana = await server.create_user(Role.ANALYST)
    bob = await server.create_user(Role.ANALYST)
    address = server.running.address
    async with (
        HitlClient(address, username=candi.username, password=PASSWORD) as svc,
        HitlClient(address, username=ana.username, password=PASSWORD) as first,
        HitlClient(address, username=bob.username, password=PASSWORD) as second,
    ):
        analysis_id = (await svc.submit_decision(submit_request())).decision.analysis_id
        claimed = await first.claim_lease(analysis_id, expected_version=1)
        assert claimed.lease.epoch == 1
        released = await first.release_decision(analysis_id, lease_epoch=1)
        assert released.status == decision_pb2.DECISION_STATUS_PENDING
        taken = await second.claim_lease(analysis_id)
        assert taken.lease.epoch == 2
        stale = (
            first.release_decision(analysis_id, lease_epoch=1),
            first.escalate_decision(analysis_id, "needs an admin", lease_epoch=1),
            first.reject(analysis_id, lease_epoch=1),
            first.approve(analysis_id, lease_epoch=1),
        )
        for call in stale:
            with pytest.raises(HitlClientError) as caught:
                await call
            assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
            assert "stale" in caught.value.message
        escalated = await second.escalate_decision(analysis_id, "needs an admin", lease_epoch=2)
        assert escalated.status == decision_pb2.DECISION_STATUS_ESCALATED


async def test_a_service_account_is_bound_and_unbound_over_the_api(server: Harness) -> None:
    async with HitlClient(
        server.running.address, username="admin", password="bootstrap-password-for-tests"
    ) as admin:
        bound = await admin.create_user(
            "candi", "", access_pb2.ROLE_SERVICE, certificate_subject="CN=candi,O=SOC"
        )
        assert bound.certificate_subject == "CN=candi,O=SOC"
        moved = await admin.update_user(bound.id, certificate_subject="CN=candi-2,O=SOC")
        assert moved.certificate_subject == "CN=candi-2,O=SOC"
        assert moved.role == access_pb2.ROLE_SERVICE  # only the named field changed
        cleared = await admin.update_user(bound.id, certificate_subject="")
        assert cleared.certificate_subject == ""
        listed = {u.username: u.certificate_subject async for u in admin.list_users()}
        assert listed["candi"] == ""
