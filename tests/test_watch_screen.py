"""The triage screen in-process (textual's pilot) against a real server: verdicts, MFA."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hitl.v1 import decision_pb2
from textual.pilot import Pilot
from textual.widgets import Input, Static

from hitl_grpc.cli.watch.feed import STREAM_BACKOFF
from hitl_grpc.cli.watch.screen import (
    ApproveScreen,
    CodeScreen,
    ConfirmScreen,
    NoteScreen,
    StepUpScreen,
    WatchApp,
)
from hitl_grpc.client import HitlClient, MfaCode
from hitl_grpc.domain.values import Role
from tests.harness import PASSWORD, Harness
from tests.samples import sample_request
from tests.signin import enrolled, next_step, totp_code

SIZE = (160, 48)
WAIT_S = 10.0


def _app(server: Harness, username: str) -> WatchApp:
    def connect(mfa_code: MfaCode) -> HitlClient:
        return HitlClient(
            server.running.address,
            username=username,
            password=PASSWORD,
            mfa_code=mfa_code,
            backoff=STREAM_BACKOFF,
        )

    return WatchApp(connect, address=server.running.address, who=username)


async def _until(pilot: Pilot[None], check: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"no {what} within {WAIT_S} s")
        await pilot.pause(0.02)


async def _submit(server: Harness, **fields: Any) -> decision_pb2.Decision:
    reply = await server.decisions.SubmitDecision(
        sample_request(**fields), metadata=await server.as_role(Role.SERVICE), timeout=10
    )
    return reply.decision


async def _get(server: Harness, analysis_id: str) -> decision_pb2.Decision:
    reply = await server.decisions.GetDecision(
        decision_pb2.GetDecisionRequest(analysis_id=analysis_id),
        metadata=await server.as_role(Role.ADMIN),
        timeout=10,
    )
    return reply.decision


async def _answer(pilot: Pilot[None], app: WatchApp, text: str) -> None:
    """Types `text` into the dialog's input and sends it."""
    await _until(pilot, lambda: isinstance(app.screen, NoteScreen), "note dialog")
    app.screen.query_one(Input).value = text
    await pilot.press("enter")


async def test_reject_and_escalate_from_the_screen(server: Harness) -> None:
    analyst = await server.create_user(Role.ANALYST)
    first = await _submit(server)
    second = await _submit(server)
    app = _app(server, analyst.username)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: app.view.live and len(app.shown) == 2, "live queue")

        await pilot.press("r")
        await _answer(pilot, app, "benign scanner")
        await _until(pilot, lambda: first.analysis_id not in app.shown, "the rejection")

        await pilot.press("e")
        await _answer(pilot, app, "")  # a reason is required: the dialog stays
        assert isinstance(app.screen, NoteScreen)
        await _answer(pilot, app, "needs the owner of host-7")
        await _until(
            pilot,
            lambda: (
                app.view.items[second.analysis_id].status == decision_pb2.DECISION_STATUS_ESCALATED
            ),
            "the escalation",
        )
        await pilot.press("q")

    rejected = await _get(server, first.analysis_id)
    assert rejected.status == decision_pb2.DECISION_STATUS_REJECTED
    assert rejected.resolution.notes == "benign scanner"
    assert rejected.resolution.decided_by == analyst.username
    escalated = await _get(server, second.analysis_id)
    assert escalated.status == decision_pb2.DECISION_STATUS_ESCALATED
    assert escalated.resolution.escalation_reason == "needs the owner of host-7"


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_claim_then_release_gives_it_back(server: Harness) -> None:
    analyst = await server.create_user(Role.ANALYST)
    item = await _submit(server)
    app = _app(server, analyst.username)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: item.analysis_id in app.shown, "the item")
        await pilot.press("c")
        await _until(pilot, lambda: app.view.items[item.analysis_id].claimed_by != "", "the claim")
        assert (await _get(server, item.analysis_id)).claimed_by == analyst.username
        await pilot.press("u")
        await _until(
            pilot, lambda: app.view.items[item.analysis_id].claimed_by == "", "the release"
        )
        await pilot.press("q")
    released = await _get(server, item.analysis_id)
    assert released.status == decision_pb2.DECISION_STATUS_PENDING


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_rejecting_a_critical_item_asks_first(server: Harness) -> None:
    analyst = await server.create_user(Role.ANALYST)
    item = await _submit(server, priority=decision_pb2.PRIORITY_CRITICAL)
    app = _app(server, analyst.username)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: item.analysis_id in app.shown, "the item")
        await pilot.press("r")
        await _answer(pilot, app, "")
        await _until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("q")  # a queue key does nothing in a dialog
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await _until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), "dialog closed")
        assert (await _get(server, item.analysis_id)).status == decision_pb2.DECISION_STATUS_PENDING
        await pilot.press("r")
        await _answer(pilot, app, "")
        await _until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        await _until(pilot, lambda: item.analysis_id not in app.view.items, "the rejection")
        await pilot.press("q")
    assert (await _get(server, item.analysis_id)).status == decision_pb2.DECISION_STATUS_REJECTED


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_the_mfa_code_is_asked_on_the_screen_and_never_shown(server: Harness) -> None:
    account = await enrolled(server)
    item = await _submit(server)
    app = _app(server, account.user.username)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, CodeScreen), "the code prompt")
        field = app.screen.query_one(Input)
        assert field.password
        code = totp_code(server, account.secret)
        await pilot.press(*code)
        await _until(pilot, lambda: field.value == code, "the typed code")
        assert code not in app.export_screenshot()
        await pilot.press("enter")
        await _until(pilot, lambda: app.view.live and item.analysis_id in app.shown, "live")
        await pilot.press("q")


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_ctrl_c_leaves_even_from_a_dialog(server: Harness) -> None:
    analyst = await server.create_user(Role.ANALYST)
    item = await _submit(server)
    app = _app(server, analyst.username)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: item.analysis_id in app.shown, "the item")
        await pilot.press("e")
        await _until(pilot, lambda: isinstance(app.screen, NoteScreen), "note dialog")
        assert app.return_code is None
        await pilot.press("ctrl+c")
        await _until(pilot, lambda: app.return_code == 0, "the exit")
    assert (await _get(server, item.analysis_id)).status == decision_pb2.DECISION_STATUS_PENDING


async def _approve_first_action(pilot: Pilot[None], app: WatchApp, code: str | None) -> None:
    """a, tick the first action, an empty note, y; then the step-up code, if one is given."""
    await pilot.press("a")
    await _until(pilot, lambda: isinstance(app.screen, ApproveScreen), "the approve dialog")
    await pilot.press("space", "enter")
    await _answer(pilot, app, "")
    await _until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
    await pilot.press("y")
    await _until(pilot, lambda: isinstance(app.screen, StepUpScreen), "the step-up prompt")
    field = app.screen.query_one(Input)
    assert field.password
    if code is not None:
        field.value = code
        assert code not in app.export_screenshot()
        await pilot.press("enter")


@pytest.mark.parametrize("backend", ["sqlite"])
async def test_a_killswitch_approval_sends_a_step_up_code_and_shows_one_of_two(
    server: Harness,
) -> None:
    account = await enrolled(server)
    ana = account.user.username
    kill = decision_pb2.Action(type=decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, target="seg-9")
    item = await _submit(server, recommended_actions=[kill])
    app = _app(server, ana)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: isinstance(app.screen, CodeScreen), "the code prompt")
        signed_in_with = totp_code(server, account.secret)
        app.screen.query_one(Input).value = signed_in_with
        await pilot.press("enter")
        await _until(pilot, lambda: item.analysis_id in app.shown, "the item")

        # The sign-in's code is spent: it cannot approve too.
        await _approve_first_action(pilot, app, signed_in_with)
        await _until(pilot, lambda: "refused: permission denied" in app.outcome, "the refusal")
        assert "refused" in str(app.query_one("#status", Static).render())

        next_step(server)
        await _approve_first_action(pilot, app, totp_code(server, account.secret))
        await _until(pilot, lambda: "needs another approver" in app.outcome, "the partial")
        assert f"1/2 approved by {ana}" in app.outcome
        shown_item = app.view.items[item.analysis_id]
        assert shown_item.status == decision_pb2.DECISION_STATUS_PENDING
        assert f"1/2 approved by {ana}" in str(app.query_one("#detail", Static).render())

        # One person twice is no second approval; the server says so on the screen.
        next_step(server)
        await _approve_first_action(pilot, app, totp_code(server, account.secret))
        await _until(pilot, lambda: "already approved" in app.outcome, "the duplicate refusal")

        # Esc at the code prompt sends nothing.
        await _approve_first_action(pilot, app, None)
        await pilot.press("escape")
        await _until(pilot, lambda: not isinstance(app.screen, StepUpScreen), "prompt closed")
        await pilot.press("q")
    stored = await _get(server, item.analysis_id)
    assert stored.status == decision_pb2.DECISION_STATUS_PENDING
    assert list(stored.action_verdicts[0].approved_by) == [ana]


async def test_verdicts_are_fenced_to_the_screens_claim(server: Harness) -> None:
    analyst = await server.create_user(Role.ANALYST)
    item = await _submit(server)
    app = _app(server, analyst.username)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: item.analysis_id in app.shown, "the item")
        await pilot.press("c")
        await _until(pilot, lambda: app.view.items[item.analysis_id].lease_epoch == 1, "claim")

        # The same analyst elsewhere lets it go and claims it again: a new lease, epoch 2.
        async with HitlClient(
            server.running.address, username=analyst.username, password=PASSWORD
        ) as elsewhere:
            await elsewhere.release_decision(item.analysis_id)
            await elsewhere.claim_decision(item.analysis_id)
        await _until(
            pilot, lambda: app.view.items[item.analysis_id].lease_epoch == 2, "the new lease"
        )
        await pilot.press("r")
        await _answer(pilot, app, "")
        await _until(pilot, lambda: "refused: failed precondition" in app.outcome, "refusal")
        assert "stale" in app.outcome
        assert (await _get(server, item.analysis_id)).status == (
            decision_pb2.DECISION_STATUS_IN_REVIEW
        )

        # Claiming it here again takes up the live lease, and the verdict goes through.
        await pilot.press("c")
        await _until(pilot, lambda: app.outcome.startswith("claimed"), "the renewed claim")
        await pilot.press("r")
        await _answer(pilot, app, "")
        await _until(pilot, lambda: item.analysis_id not in app.view.items, "the rejection")
        await pilot.press("q")
    assert (await _get(server, item.analysis_id)).status == decision_pb2.DECISION_STATUS_REJECTED
