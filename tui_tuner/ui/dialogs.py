"""Modal dialogs: confirm, quit, and the params dialog of fork (checkpoint + overrides) and new trial."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui_tuner.engine.errors import SweepError
from tui_tuner.engine.fork_plan import ForkPlan
from tui_tuner.engine.snapshot import TrialSnapshot
from tui_tuner.format import fmt_exact, fmt_loss, fmt_lr
from tui_tuner.params import TrialParams, fork_fixed_params
from tui_tuner.ui.charts import sparkline


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no question; `y` confirms, `n`/escape cancel; focus starts on No so a stray enter is harmless."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("y", "answer(True)", "Yes", id="confirm.yes"),
                Binding("n,escape", "answer(False)", "No", id="confirm.no")]

    def __init__(self, question: str) -> None:
        super().__init__(classes="dialog-screen")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="dialog-title")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class QuitScreen(ModalScreen[str | None]):
    """Quit a client of a background engine: `d` detaches (the sweep goes on), `s` stops it, escape cancels.
    Focus starts on Detach: the choice that loses nothing."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("d", "answer('detach')", "Detach", id="quit.detach"),
                Binding("s", "answer('stop')", "Stop", id="quit.stop"),
                Binding("escape,c", "answer(None)", "Cancel", id="quit.cancel")]

    def __init__(self, run_dir: object) -> None:
        super().__init__(classes="dialog-screen")
        # Absolute and shell-quoted: the commands are pasted later, from whatever directory the user is in.
        self.run_dir = shlex.quote(str(Path(str(run_dir)).absolute()))

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            # Each command on a line of its own, so a narrow terminal wraps the prose, never the command.
            yield Static(f"Quit?\nDetach: the sweep keeps running; come back with\n  tui-tuner attach {self.run_dir}\n"
                         f"Stop: running trials checkpoint and stop; continue later with\n"
                         f"  tui-tuner resume {self.run_dir}", classes="dialog-title")
            with Horizontal(classes="buttons"):
                yield Button("Detach (d)", variant="primary", id="detach")
                yield Button("Stop (s)", variant="error", id="stop")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#detach", Button).focus()

    def action_answer(self, choice: str | None) -> None:
        self.dismiss(choice)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id if event.button.id in ("detach", "stop") else None)


def parse_value(text: str, like: Any) -> Any:
    """Parse what was typed, guided by the original value's type; ValueError on nonsense."""
    text = text.strip()
    if text.lower() in ("", "none", "null"):
        return None
    if isinstance(like, bool):
        if text.lower() in ("true", "yes", "1", "on"):
            return True
        if text.lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    if isinstance(like, int) or (like is None and text.lstrip("-").isdigit()):
        return int(text)
    if isinstance(like, float) or like is None:
        try:
            return float(text)
        except ValueError:
            if like is None:
                return text
            raise
    return text


Submit = Callable[[dict[str, Any], int | None], int]  # (params, checkpoint step) -> the new trial's number
Check = Callable[[dict[str, Any], int | None], ForkPlan]  # the same, checked by the engine without acting
# Params a method never reads: not offered (a full fine-tune has no adapter; LoRA freezes the whole base model).
UNUSED = {"full": frozenset({"lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"}),
          "lora": frozenset({"freeze_layers"}), "adalora": frozenset({"freeze_layers"})}
CHECK_DELAY_S = 0.25  # typing settles before the engine is asked about the edits


def param_rows(search: dict[str, Any], method: str, fork: bool) -> list[tuple[str, str | None]]:
    """Every param the method uses, searched ones first, as (name, why it is read-only or None): a fork may change
    all but those that change the trained tensors or the optimizer (the engine refuses those; shown with why)."""
    fixed = fork_fixed_params(method) if fork else {}
    names = [*search, *(n for n in TrialParams.model_fields if n not in search)]
    return [(n, f"fixed: {fixed[n]}" if n in fixed else None) for n in names
            if n not in UNUSED.get(method, frozenset())]


class ParamsDialog(ModalScreen[int | None]):
    """Editable params (one Input each, pre-filled with the exact values); the fork variant first lists the
    checkpoints to start from and previews the child's LR. Enter picks a checkpoint or moves to the next field;
    only ctrl+s (or the button) submits. The engine's refusal keeps the dialog, and the edits, with the reason."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="dialog.cancel"),
                                             Binding("ctrl+s", "confirm", "Start", id="dialog.confirm")]

    def __init__(self, title: str, values: dict[str, Any], rows: list[tuple[str, str | None]],
                 always_send: frozenset[str], submit: Submit, trial: TrialSnapshot | None = None,
                 check: Check | None = None, confirm_label: str = "OK") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.values = values
        self.rows = rows
        self.editable = [n for n, why in rows if why is None]
        self.always_send = always_send
        self.submit = submit
        self.check = check
        self.trial = trial
        self.confirm_label = confirm_label
        self.plan: ForkPlan | None = None  # the engine's answer to the latest check
        self._steps: list[int | None] = []
        self._busy = False
        self._check_timer: Any = None
        self._checks = 0  # checks asked so far: only the latest one's answer is shown

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog params-dialog"):
            yield Static(self.title_text, classes="dialog-title")
            if self.trial is not None:
                yield Label("start from (enter: pick it, then edit the params below):")
                options = []
                if self.trial.active:
                    options.append(Option(f"now (new checkpoint at step ≥ {self.trial.step})"))
                    self._steps.append(None)
                for c in reversed(self.trial.checkpoints):
                    options.append(Option(f"step {c.step:>6}   eval {fmt_loss(c.eval_loss)}"))
                    self._steps.append(c.step)
                yield OptionList(*options, id="checkpoints")
            with VerticalScroll(id="param-rows"):
                for name, why in self.rows:
                    with Horizontal(classes="param-row"):
                        yield Label(name, classes="param-name")
                        yield Input(fmt_exact(self.values.get(name)), id=f"param-{name}", classes="param-input",
                                    disabled=why is not None)
                        if why is not None:
                            yield Label(why, classes="param-why")
            if self.check is not None:
                yield Static("", id="lr-preview")
            yield Static("", id="dialog-error")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.confirm_label} (ctrl+s)", variant="primary", id="confirm")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        # The scroll container around the inputs would take a Tab stop of its own: Tab goes list -> inputs.
        self.query_one("#param-rows", VerticalScroll).can_focus = False
        if self.trial is not None:
            ol = self.query_one("#checkpoints", OptionList)
            if ol.option_count:
                ol.highlighted = 0
            ol.focus()
        elif self.editable:
            self.query_one(f"#param-{self.editable[0]}", Input).focus()
        self._check_soon(0.01)

    # -- what was typed --------------------------------------------------------------------------
    def _say(self, error: str) -> None:
        self.query_one("#dialog-error", Static).update(error)

    def _step(self) -> int | None:
        if self.trial is None or not self._steps:
            return None
        return self._steps[self.query_one("#checkpoints", OptionList).highlighted or 0]

    def _params(self) -> dict[str, Any]:
        """The edits (and the params always sent), parsed by the original's type; ValueError names the field."""
        params: dict[str, Any] = {}
        for name in self.editable:
            text = self.query_one(f"#param-{name}", Input).value
            original = self.values.get(name)
            if name not in self.always_send and text.strip() == fmt_exact(original):
                continue
            try:
                params[name] = parse_value(text, original)
            except ValueError:
                raise ValueError(f"{name}: cannot parse {text!r}") from None
        return params

    # -- the engine's check (fork: the child's LR from the fork step) ----------------------------
    def _check_soon(self, delay: float = CHECK_DELAY_S) -> None:
        if self.check is None:
            return
        if self._check_timer is not None:
            self._check_timer.stop()
        self._check_timer = self.set_timer(delay, self._check_now)

    def _check_now(self) -> None:
        try:
            params = self._params()
        except ValueError as e:
            self._show_check(None, str(e))
            return
        self._checks += 1
        self._run_check(params, self._step(), self._checks)

    @work(thread=True, group="check")
    def _run_check(self, params: dict[str, Any], step: int | None, seq: int) -> None:
        assert self.check is not None
        plan, error = _answer(lambda: self.check(params, step))  # type: ignore[misc]
        self._back(self._show_check, plan, error, seq)

    def _back(self, fn: Callable[..., None], *args: Any) -> None:
        """Hand a worker's answer to the UI thread; the app may have closed meanwhile (nobody to tell)."""
        with contextlib.suppress(RuntimeError):
            self.app.call_from_thread(fn, *args)

    def _show_check(self, plan: ForkPlan | None, error: str, seq: int) -> None:
        if not self.is_mounted or seq != self._checks:  # an older check answering late
            return
        self.plan = plan
        if not self._busy:
            self._say(error)
        self.query_one("#lr-preview", Static).update(lr_preview(plan) if plan else "")

    # -- submit ----------------------------------------------------------------------------------
    def action_cancel(self) -> None:
        if self._busy:  # the engine is acting on it: its answer comes back here
            self.notify("wait: the engine is acting on it", severity="warning")
            return
        self.dismiss(None)

    def action_confirm(self) -> None:
        if self._busy:
            return
        if self.trial is not None and not self._steps:
            self._say("this trial has no checkpoint to fork from")
            return
        try:
            params = self._params()
        except ValueError as e:
            self._say(str(e))
            return
        self._busy = True
        self.query_one("#confirm", Button).disabled = True
        self._say("")
        self.query_one("#dialog-error", Static).update(
            f"{self.confirm_label.lower()}: asking the engine…" + (
                " (the trial checkpoints at its next step)" if self.trial is not None and self._step() is None else ""))
        self._run_submit(params, self._step())

    @work(thread=True, group="submit")
    def _run_submit(self, params: dict[str, Any], step: int | None) -> None:
        number, error = _answer(lambda: self.submit(params, step))
        self._back(self._submitted, number, error)

    def _submitted(self, number: int | None, error: str) -> None:
        self._busy = False
        if number is not None:
            self.dismiss(number)
            return
        if self.is_mounted:  # refused: the edits stay, with the engine's reason
            self.query_one("#confirm", Button).disabled = False
            self._say(error)

    # -- keys ------------------------------------------------------------------------------------
    @on(OptionList.OptionSelected)
    def _picked(self) -> None:
        """Enter on a checkpoint picks it and moves to the params; it never submits."""
        if self.editable:
            self.query_one(f"#param-{self.editable[0]}", Input).focus()
        self._check_soon(0.01)

    @on(OptionList.OptionHighlighted)
    def _moved(self) -> None:
        self._check_soon()

    @on(Input.Changed)
    def _edited(self) -> None:
        self._check_soon()

    @on(Input.Submitted)
    def _next_field(self) -> None:
        self.focus_next()

    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        self.action_confirm()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.action_cancel()


def _answer(ask: Callable[[], Any]) -> tuple[Any, str]:
    """(the engine's answer, "") or (None, its one-line refusal); any other error too: a worker's exception would
    take the app down."""
    try:
        return ask(), ""
    except SweepError as e:
        return None, str(e)
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def lr_preview(plan: ForkPlan, width: int = 26) -> str:
    """Two lines: the typed LR is the peak, what the child starts at, and its planned LR from the fork step on."""
    start = fmt_lr(plan.start_lr)
    end = fmt_lr(plan.plan[-1][1] if plan.plan else None)
    return (f"learning_rate {fmt_lr(plan.peak_lr)} is the schedule's peak, not the child's LR:\n"
            f"child's LR {plan.step}→{plan.total_steps}: {sparkline(plan.plan, width, plan.peak_lr)} {start}→{end}")
