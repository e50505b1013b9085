"""The triage screen: the live queue, the selected item in full, and keys to work it.

Every string that came from the server reaches a widget as `rich.text.Text` built from
`text.shown`/`text.cut`, never as a str (textual parses str as markup).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import ClassVar, Final

from hitl.v1 import decision_pb2
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Input, Label, SelectionList, Static
from textual.widgets.selection_list import Selection

from hitl_grpc.cli.watch.feed import describe, follow
from hitl_grpc.cli.watch.queue import Phase, QueueView
from hitl_grpc.cli.watch.text import clock, countdown, cut, shown, span
from hitl_grpc.client import HitlClient, HitlClientError, MfaCode

ClientFactory = Callable[[MfaCode], HitlClient]

PRIORITY_STYLE: Final = {
    decision_pb2.PRIORITY_CRITICAL: ("CRITICAL", "bold red"),
    decision_pb2.PRIORITY_HIGH: ("HIGH", "red"),
    decision_pb2.PRIORITY_MEDIUM: ("MEDIUM", "yellow"),
    decision_pb2.PRIORITY_LOW: ("LOW", "green"),
}
# Approving any of these, or deciding a CRITICAL item, asks once more; approving one of
# these also asks for a step-up TOTP code (the server's default HITL_STEP_UP_ACTIONS).
HIGH_IMPACT: Final = frozenset(
    {decision_pb2.ACTION_TYPE_ACTIVATE_KILLSWITCH, decision_pb2.ACTION_TYPE_DEPLOY_COUNTERMEASURE}
)
PAST: Final = {
    "claim": "claimed",
    "release": "released",
    "approve": "approved",
    "reject": "rejected",
    "escalate": "escalated",
}
# How long a refused call's notice stays up: long enough to read the server's reason.
REFUSAL_S: Final = 20.0
# (key, label, width): widths in terminal cells; longer text ends in an ellipsis. The id
# and actor columns share what the terminal has left (see `column_widths`).
COLUMNS: Final = (
    ("priority", "priority", 8),
    ("analysis", "analysis", 36),
    ("status", "status", 9),
    ("sla", "SLA left", 11),
    ("age", "age", 7),
    ("claimed", "claimed by", 12),
    ("actor", "actor", 28),
)
WIDTH: Final = {key: width for key, _, width in COLUMNS}
# Each cell's padding, and the table's vertical scrollbar.
_CELL_PADDING: Final = 2
_SCROLLBAR: Final = 1
_MIN_ANALYSIS: Final = 10
_MIN_ACTOR: Final = 8


def column_widths(total: int) -> dict[str, int]:
    """Column widths for a terminal `total` cells wide: the id up to its usual 36, then the
    actor takes the rest, so that narrow terminals still show every column."""
    fixed = sum(WIDTH[k] for k in ("priority", "status", "sla", "age", "claimed"))
    spare = total - fixed - _CELL_PADDING * len(COLUMNS) - _SCROLLBAR
    analysis = max(_MIN_ANALYSIS, min(WIDTH["analysis"], spare - _MIN_ACTOR))
    return {**WIDTH, "analysis": analysis, "actor": max(_MIN_ACTOR, spare - analysis)}


TICK_S: Final = 1.0
# How long changes gather before the table is rebuilt.
REDRAW_S: Final = 0.05
KEYS: Final = (
    ("↑ ↓ PgUp PgDn Home End", "move through the queue"),
    ("c", "claim the selected item"),
    ("u", "release (unclaim) it"),
    (
        "a",
        "approve: choose among its recommended actions, add a note (a TOTP code for high-impact)",
    ),
    ("r", "reject, with a note"),
    ("e", "escalate to an admin, with a reason"),
    ("?", "these keys"),
    ("q", "quit"),
)


def _at(ts: object) -> datetime | None:
    """A Timestamp field as an aware datetime; None when unset."""
    seconds = getattr(ts, "seconds", 0)
    nanos = getattr(ts, "nanos", 0)
    if not seconds and not nanos:
        return None
    return datetime.fromtimestamp(seconds + nanos / 1e9, UTC)


def status_name(status: int) -> str:
    """DECISION_STATUS_IN_REVIEW -> IN_REVIEW."""
    name = decision_pb2.DecisionStatus.Name(status)  # type: ignore[arg-type]
    return name.removeprefix("DECISION_STATUS_")


def type_name(action: decision_pb2.Action) -> str:
    """ACTION_TYPE_BLOCK_IP -> BLOCK_IP."""
    return decision_pb2.ActionType.Name(action.type).removeprefix("ACTION_TYPE_")


def action_name(action: decision_pb2.Action) -> str:
    """One action in words: BLOCK_IP 203.0.113.7 — block."""
    words = f"{type_name(action)} {shown(action.target)}".rstrip()
    return f"{words} — {shown(action.description)}" if action.description else words


def verdict_words(verdict: decision_pb2.ActionVerdict) -> str:
    """Where one action stands: PENDING · 1/2 approved by ana; REJECTED by bob."""
    status = decision_pb2.ActionVerdictStatus.Name(verdict.status)
    words = status.removeprefix("ACTION_VERDICT_STATUS_")
    if verdict.rejected_by:
        return f"{words} by {shown(verdict.rejected_by)}"
    approvals = f"{len(verdict.approved_by)}/{verdict.required_approvals} approved"
    if verdict.approved_by:
        approvals += " by " + ", ".join(shown(a) for a in verdict.approved_by)
    return f"{words} · {approvals}"


def high_impact(
    decision: decision_pb2.Decision, actions: Iterable[decision_pb2.Action] = ()
) -> bool:
    """Whether deciding this asks for a confirmation."""
    return decision.priority == decision_pb2.PRIORITY_CRITICAL or any(
        a.type in HIGH_IMPACT for a in actions
    )


def row(
    decision: decision_pb2.Decision, now: datetime, widths: dict[str, int] = WIDTH
) -> list[Text]:
    """The queue row of one decision, each cell cut to its column."""
    name, style = PRIORITY_STYLE.get(decision.priority, ("?", ""))
    return [
        Text(name, style=style),
        Text(cut(decision.analysis_id, widths["analysis"])),
        Text(status_name(decision.status)),
        sla_cell(decision, now),
        age_cell(decision, now),
        Text(cut(decision.claimed_by, widths["claimed"]) or "-"),
        Text(cut(decision.attributed_actor, widths["actor"])),
    ]


def sla_cell(decision: decision_pb2.Decision, now: datetime) -> Text:
    """Time left to the SLA deadline; red once it has passed."""
    deadline = _at(decision.sla_deadline)
    words = countdown(deadline, now)
    late = deadline is not None and deadline <= now
    return Text(words, style="bold red" if late else "")


def age_cell(decision: decision_pb2.Decision, now: datetime) -> Text:
    """How long the decision has waited."""
    created = _at(decision.created_at)
    return Text(span(now - created) if created else "-")


def detail(decision: decision_pb2.Decision, now: datetime) -> Text:
    """The whole decision, field by field, every value literal."""
    out = Text()

    def line(label: str, value: str | Text) -> None:
        out.append(f"{label:<14}", style="bold")
        out.append(value if isinstance(value, Text) else Text(value))
        out.append("\n")

    name, style = PRIORITY_STYLE.get(decision.priority, ("?", ""))
    out.append(shown(decision.analysis_id), style="bold")
    out.append("  ")
    out.append(name, style=style)
    out.append(f"  {status_name(decision.status)}  v{decision.version}\n")
    line("incident", shown(decision.incident_id) or "-")
    line("source IP", shown(decision.source_ip) or "-")
    line("threat level", shown(decision.threat_level) or "-")
    line("confidence", f"{decision.confidence:g}%")
    line("actor", shown(decision.attributed_actor) or "-")
    detected = _at(decision.detected_at)
    if detected is not None:
        line("detected", f"{clock(detected)} ({span(now - detected)} ago)")
    if decision.submitted_by:
        line("submitted by", shown(decision.submitted_by))
    deadline = _at(decision.sla_deadline)
    if deadline is not None:
        line("SLA left", Text.assemble(sla_cell(decision, now), f" (deadline {clock(deadline)})"))
    expires = _at(decision.expires_at)
    if expires is not None:
        line("expires", f"{clock(expires)} ({countdown(expires, now)})")
    if decision.claimed_by:
        until = _at(decision.claim_expires_at)
        lease = f" until {clock(until)} ({countdown(until, now)} left)" if until else ""
        line("claimed by", shown(decision.claimed_by) + lease)
    line("IOCs", ", ".join(shown(i) for i in decision.iocs) or "-")
    line("TTPs", ", ".join(shown(t) for t in decision.ttps) or "-")
    actions = decision.recommended_actions
    if not actions:
        line("recommended", "-")
    verdicts = {v.recommended_index: v for v in decision.action_verdicts}
    for n, action in enumerate(actions, 1):
        text = Text(f"{n}. {action_name(action)}")
        if action.type in HIGH_IMPACT:
            text.stylize("bold red")
        verdict = verdicts.get(n - 1)
        if verdict is not None:
            text.append(f"  [{verdict_words(verdict)}]")
        line("recommended" if n == 1 else "", text)
    for verdict in decision.action_verdicts:
        if verdict.recommended_index < 0:
            line("added", Text(f"{action_name(verdict.action)}  [{verdict_words(verdict)}]"))
    out.append("summary\n", style="bold")
    out.append(shown(decision.forensic_summary, multiline=True) or "-")
    return out


class CodeScreen(ModalScreen[str]):
    """Asks for an MFA code; the input is not echoed."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("MFA code (or a backup code), then Enter:")
            yield Input(password=True, id="code")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss("")


class StepUpScreen(ModalScreen[str | None]):
    """Asks for the step-up TOTP code a high-impact approval needs; the input is not echoed.

    Enter sends what was typed, even nothing (an account without MFA then hears from the
    server why it cannot approve); Esc sends nothing at all.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, what: str) -> None:
        super().__init__()
        self._what = what

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog confirm"):
            yield Label(Text(f"Step-up: approving {self._what} needs a fresh TOTP code"))
            yield Input(password=True, placeholder="6-digit code", id="otp")
            yield Label(
                "not a backup code, nor the one you signed in with · Enter: send · Esc: cancel",
                classes="hint",
            )

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


class NoteScreen(ModalScreen[str | None]):
    """Asks for a note or a reason: Enter sends it, Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, title: str, placeholder: str, *, required: bool) -> None:
        super().__init__()
        self._title = title
        self._placeholder = placeholder
        self._required = required

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self._title))
            yield Input(placeholder=self._placeholder, id="note")
            yield Label("Enter: send · Esc: cancel", classes="hint")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if self._required and not value:
            self.notify("a reason is required", severity="warning")
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ActionList(SelectionList[int]):
    """The recommended actions: Space ticks one, Enter takes the ticked ones."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "take", "approve these")]

    def action_take(self) -> None:
        screen = self.screen
        if isinstance(screen, ApproveScreen):
            screen.take()


class ApproveScreen(ModalScreen[tuple[decision_pb2.Action, ...] | None]):
    """Chooses among the recommended actions; the note is asked for next, on its own.

    Two steps rather than a list and a note field side by side: keys typed right after Tab
    would still reach the list (textual moves focus only once it has handled the Tab), so a
    space meant for the note could tick or untick an action.
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, decision: decision_pb2.Decision) -> None:
        super().__init__()
        self._decision = decision

    def compose(self) -> ComposeResult:
        actions = self._decision.recommended_actions
        with Vertical(classes="dialog"):
            yield Label(
                Text(f"Approve {shown(self._decision.analysis_id)}: the actions to carry out")
            )
            yield ActionList(
                *(
                    Selection(
                        Text(
                            f"{n}. {action_name(a)}", style="red" if a.type in HIGH_IMPACT else ""
                        ),
                        n - 1,
                    )
                    for n, a in enumerate(actions, 1)
                ),
                id="actions",
            )
            yield Static(self._chosen_text(), id="chosen")
            yield Label(
                "Space: tick an action · Enter: on to the note · Esc: cancel", classes="hint"
            )

    def _picked(self) -> tuple[decision_pb2.Action, ...]:
        actions = self._decision.recommended_actions
        chosen = self.query_one(ActionList).selected if self.is_mounted else []
        return tuple(actions[i] for i in sorted(chosen))

    def _chosen_text(self) -> Text:
        picked = self._picked()
        names = "; ".join(action_name(a) for a in picked) if picked else "none (approve only)"
        return Text(f"chosen: {names}")

    @on(SelectionList.SelectedChanged)
    def _changed(self) -> None:
        self.query_one("#chosen", Static).update(self._chosen_text())

    def take(self) -> None:
        """Ends the dialog with the ticked actions."""
        self.dismiss(self._picked())

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A last look before a high-impact verdict: y goes ahead, n or Esc does not."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes"),
        Binding("n", "answer(False)", "no"),
        Binding("escape", "answer(False)", "no"),
    ]

    def __init__(self, question: Text) -> None:
        super().__init__()
        self._question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog confirm"):
            yield Static(self._question)
            yield Label("y: go ahead · n / Esc: cancel", classes="hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    """The keys; any key closes it."""

    def compose(self) -> ComposeResult:
        text = Text()
        for key, meaning in KEYS:
            text.append(f"{key:<24}", style="bold")
            text.append(f"{meaning}\n")
        text.append("\nhigh-impact verdicts (KILLSWITCH, COUNTERMEASURE, CRITICAL) ask to confirm;")
        text.append("\napproving KILLSWITCH or COUNTERMEASURE asks for a fresh TOTP code too")
        with Vertical(classes="dialog"):
            yield Static(text)
            yield Label("any key closes this", classes="hint")

    def on_key(self) -> None:
        self.dismiss(None)


class QueueTable(DataTable[Text]):
    """The queue: one row per open decision; Home and End go to the first and last."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home", "scroll_top", "first", show=False),
        Binding("end", "scroll_bottom", "last", show=False),
    ]


class WatchApp(App[None]):
    """The queue, its selected item, the connection's state; keys to work the queue."""

    TITLE = "hitl-grpc watch"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #status { height: auto; max-height: 3; padding: 0 1; background: $panel; }
    #queue { height: 1fr; }
    #detail-box { height: 45%; border-top: solid $accent; padding: 0 1; }
    .dialog { width: 90; max-width: 95%; height: auto; max-height: 90%;
              border: thick $accent; background: $surface; padding: 1 2; }
    .confirm { border: thick $error; }
    .hint { color: $text-muted; margin-top: 1; }
    #actions { height: auto; max-height: 14; }
    ModalScreen { align: center middle; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("c", "claim", "claim"),
        Binding("u", "release", "release"),
        Binding("a", "approve", "approve"),
        Binding("r", "reject", "reject"),
        Binding("e", "escalate", "escalate"),
        Binding("question_mark", "help", "keys"),
        Binding("q", "quit", "quit"),
        # Ctrl+C leaves from anywhere, a dialog included.
        Binding("ctrl+c", "leave", "quit", show=False, priority=True),
    ]
    # Queue keys act on the main screen only: in a dialog they are typed or ignored.
    QUEUE_ACTIONS: ClassVar[frozenset[str]] = frozenset(
        {"claim", "release", "approve", "reject", "escalate", "help", "quit"}
    )

    def __init__(
        self,
        connect: ClientFactory,
        *,
        address: str,
        who: str,
        priorities: Sequence[decision_pb2.Priority.ValueType] = (),
    ) -> None:
        super().__init__()
        self._connect = connect
        self._address = address
        self._who = who
        self._priorities = list(priorities)
        self.view = QueueView()
        self._client: HitlClient | None = None
        self._shown: list[str] = []  # the analysis ids in the table's order
        self._widths: dict[str, int] = {}
        self._redraw_due = False
        # The lease epoch of each claim this screen took: its verdicts are fenced to it.
        self._leases: dict[str, int] = {}
        # The outcome of the last call, kept on the status line until the next one.
        self._outcome = Text()

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield QueueTable(id="queue", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="detail-box"):
            yield Static(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        self._client = self._connect(self._mfa_code)
        # A failure the feed does not expect ends the screen loudly: a screen that went on
        # saying "live" with nothing feeding it would be lying.
        self.run_worker(self._feed(), name="feed")
        self.set_interval(TICK_S, self._tick)
        self.query_one(DataTable).focus()
        self._redraw()

    async def on_unmount(self) -> None:
        if self._client is not None:
            await self._client.close()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in self.QUEUE_ACTIONS and len(self.screen_stack) > 1)

    # -- the feed -------------------------------------------------------------------------

    async def _feed(self) -> None:
        assert self._client is not None
        try:
            await follow(self._client, self.view, self._changed, self._priorities)
        except HitlClientError as exc:
            self.exit(return_code=1, message=Text(f"hitl-grpc watch: {describe(exc)}"))

    async def _mfa_code(self) -> str:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def done(code: str | None) -> None:
            if not answer.done():
                answer.set_result(code or "")

        self.push_screen(CodeScreen(), callback=done)
        return await answer

    # -- drawing --------------------------------------------------------------------------

    @property
    def shown(self) -> tuple[str, ...]:
        """The analysis ids in the table, top to bottom: what the keys act on."""
        return tuple(self._shown)

    @property
    def outcome(self) -> str:
        """The last call's outcome as the status line shows it ("" before the first)."""
        return self._outcome.plain

    def _selected(self) -> decision_pb2.Decision | None:
        table = self.query_one(DataTable)
        index = table.cursor_row
        if not 0 <= index < len(self._shown):
            return None
        return self.view.items.get(self._shown[index])

    def _changed(self) -> None:
        """The view changed: one redraw soon for however many changes arrive meanwhile (a
        snapshot of a thousand items is one redraw, not a thousand)."""
        if not self._redraw_due:
            self._redraw_due = True
            self.set_timer(REDRAW_S, self._redraw)

    def _redraw(self) -> None:
        """Rebuilds the table from the view, keeping the selection on the same item."""
        self._redraw_due = False
        table: DataTable[Text] = self.query_one(DataTable)
        chosen = self._selected()
        index = table.cursor_row
        now = datetime.now(UTC)
        ordered = self.view.ordered()
        widths = column_widths(table.size.width or self.size.width)
        table.clear(columns=widths != self._widths)
        if widths != self._widths:
            self._widths = widths
            for key, label, _ in COLUMNS:
                table.add_column(label, width=widths[key], key=key)
        for decision in ordered:
            table.add_row(*row(decision, now, widths), key=decision.analysis_id)
        self._shown = [d.analysis_id for d in ordered]
        if ordered:
            if chosen is not None and chosen.analysis_id in self.view.items:
                index = self._shown.index(chosen.analysis_id)
            table.move_cursor(row=min(max(index, 0), len(ordered) - 1), animate=False)
        self._draw_status(now)
        self._draw_detail(now)

    def _tick(self) -> None:
        """Ages and countdowns move every second, events or not."""
        table: DataTable[Text] = self.query_one(DataTable)
        if column_widths(table.size.width) != self._widths:
            self._redraw()  # the terminal was resized
            return
        now = datetime.now(UTC)
        for analysis_id in self._shown:
            decision = self.view.items.get(analysis_id)
            if decision is None:
                continue
            table.update_cell(analysis_id, "sla", sla_cell(decision, now))
            table.update_cell(analysis_id, "age", age_cell(decision, now))
        self._draw_status(now)
        self._draw_detail(now)

    def _draw_status(self, now: datetime) -> None:
        c = self.view.connection
        state = c.line(self._address)
        style = {Phase.LIVE: "bold green", Phase.RECONNECTING: "bold red"}.get(c.phase, "yellow")
        text = Text(state, style=style)
        if c.ever_live:
            text.append(f" · {len(self.view.items)} open")
        text.append(f" · {shown(self._who)} @ {shown(self._address)}")
        if self.view.last_change:
            text.append(f" · {shown(self.view.last_change)}")
        if self._outcome:
            text.append(" · ")
            text.append_text(self._outcome)
        self.query_one("#status", Static).update(text)

    def _draw_detail(self, now: datetime) -> None:
        decision = self._selected()
        pane = self.query_one("#detail", Static)
        if decision is None:
            pane.update(Text("nothing selected" if self.view.live else "no data yet"))
        else:
            pane.update(detail(decision, now))

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self._draw_detail(datetime.now(UTC))

    # -- acting ---------------------------------------------------------------------------

    def _start(self, work: Callable[[decision_pb2.Decision], Awaitable[None]]) -> None:
        decision = self._selected()
        if decision is None:
            self.notify("no item selected", severity="warning")
            return
        self.run_worker(work(decision), group="act")

    def _lease(self, decision: decision_pb2.Decision) -> int | None:
        """The epoch to fence a verdict on this decision to: that of our claim, if we hold one."""
        return self._leases.get(decision.analysis_id)

    async def _send(
        self, verb: str, decision: decision_pb2.Decision, call: Awaitable[decision_pb2.Decision]
    ) -> None:
        try:
            result = await call
        except HitlClientError as exc:
            # The server's reason in full (no MFA, a used code, a stale lease, the submitter
            # approving): it says what to do, so it stays up and on the status line.
            words = f"{verb} {shown(decision.analysis_id)} refused: {describe(exc, whole=True)}"
            self._outcome = Text(words, style="bold red")
            self._draw_status(datetime.now(UTC))
            self.notify(words, severity="error", markup=False, timeout=REFUSAL_S)
            return
        if result.claimed_by == self._who and result.lease_epoch:
            self._leases[result.analysis_id] = result.lease_epoch
        else:
            # Released, decided, or back in the queue after a partial approval: no claim left.
            self._leases.pop(result.analysis_id, None)
        self.view.merge(result)
        words = f"{PAST[verb]} {shown(result.analysis_id)}: now {status_name(result.status)}"
        short = [
            verdict_words(v)
            for v in result.action_verdicts
            if v.status == decision_pb2.ACTION_VERDICT_STATUS_PENDING and v.approved_by
        ]
        if short:
            words += " — needs another approver: " + "; ".join(short)
        self._outcome = Text(words)
        self._redraw()
        self.notify(words, markup=False, timeout=REFUSAL_S if short else 5)

    async def _confirmed(self, question: str) -> bool:
        answer: bool = await self.push_screen_wait(ConfirmScreen(Text(question)))
        return answer

    def action_claim(self) -> None:
        async def work(d: decision_pb2.Decision) -> None:
            assert self._client is not None
            await self._send(
                "claim", d, self._client.claim_decision(d.analysis_id, expected_version=d.version)
            )

        self._start(work)

    def action_release(self) -> None:
        async def work(d: decision_pb2.Decision) -> None:
            assert self._client is not None
            await self._send(
                "release",
                d,
                self._client.release_decision(
                    d.analysis_id, expected_version=d.version, lease_epoch=self._lease(d)
                ),
            )

        self._start(work)

    def action_approve(self) -> None:
        async def work(d: decision_pb2.Decision) -> None:
            assert self._client is not None
            actions = await self.push_screen_wait(ApproveScreen(d))
            if actions is None:
                return
            chosen = "; ".join(action_name(a) for a in actions) or "no actions"
            note = await self.push_screen_wait(
                NoteScreen(
                    f"Approve {shown(d.analysis_id)} with: {chosen}",
                    "note (optional)",
                    required=False,
                )
            )
            if note is None:
                return
            if high_impact(d, actions):
                name = PRIORITY_STYLE.get(d.priority, ("?", ""))[0]
                if not await self._confirmed(
                    f"Approve {shown(d.analysis_id)} ({name}) and carry out: {chosen}?"
                ):
                    return
            otp = ""
            stepped = sorted({type_name(a) for a in actions if a.type in HIGH_IMPACT})
            if stepped:
                code = await self.push_screen_wait(StepUpScreen(" and ".join(stepped)))
                if code is None:
                    return
                otp = code
            await self._send(
                "approve",
                d,
                self._client.approve(
                    d.analysis_id,
                    actions,
                    notes=note,
                    expected_version=d.version,
                    lease_epoch=self._lease(d),
                    otp=otp,
                ),
            )

        self._start(work)

    def action_reject(self) -> None:
        async def work(d: decision_pb2.Decision) -> None:
            assert self._client is not None
            note = await self.push_screen_wait(
                NoteScreen(
                    f"Reject {shown(d.analysis_id)}: nothing is carried out",
                    "note (optional)",
                    required=False,
                )
            )
            if note is None:
                return
            if high_impact(d) and not await self._confirmed(
                f"Reject CRITICAL {shown(d.analysis_id)}: none of its actions are carried out?"
            ):
                return
            await self._send(
                "reject",
                d,
                self._client.reject(
                    d.analysis_id,
                    notes=note,
                    expected_version=d.version,
                    lease_epoch=self._lease(d),
                ),
            )

        self._start(work)

    def action_escalate(self) -> None:
        async def work(d: decision_pb2.Decision) -> None:
            assert self._client is not None
            reason = await self.push_screen_wait(
                NoteScreen(
                    f"Escalate {shown(d.analysis_id)} to an admin: why?",
                    "reason (required)",
                    required=True,
                )
            )
            if reason is None:
                return
            await self._send(
                "escalate",
                d,
                self._client.escalate_decision(
                    d.analysis_id, reason, expected_version=d.version, lease_epoch=self._lease(d)
                ),
            )

        self._start(work)

    def action_leave(self) -> None:
        self.exit()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())
