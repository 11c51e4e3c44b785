"""Modal dialogs: confirm, fork (checkpoint + param overrides), new trial (params to enqueue)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui_tuner.engine.snapshot import TrialSnapshot
from tui_tuner.format import fmt_float, fmt_value
from tui_tuner.params import TrialParams, first_error, shape_params


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


@dataclass(frozen=True)
class ParamsRequest:
    params: dict[str, Any]
    step: int | None = None  # fork only: None = checkpoint now (running) / latest


class ParamsDialog(ModalScreen[ParamsRequest | None]):
    """Editable params (one Input each, pre-filled); the fork variant also lists checkpoints to start from."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="dialog.cancel"),
                                             Binding("ctrl+s", "confirm", "Confirm", id="dialog.confirm")]

    def __init__(self, title: str, values: dict[str, Any], editable: list[str], always_send: frozenset[str],
                 trial: TrialSnapshot | None = None, confirm_label: str = "OK") -> None:
        super().__init__(classes="dialog-screen")
        self.title_text = title
        self.values = values
        self.editable = editable
        self.always_send = always_send
        self.trial = trial
        self.confirm_label = confirm_label
        self._steps: list[int | None] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog params-dialog"):
            yield Static(self.title_text, classes="dialog-title")
            if self.trial is not None:
                yield Label("start from checkpoint:")
                options = []
                if self.trial.active:
                    options.append(Option(f"now (new checkpoint at step ≥ {self.trial.step})"))
                    self._steps.append(None)
                for c in reversed(self.trial.checkpoints):
                    options.append(Option(f"step {c.step:>6}   eval {fmt_float(c.eval_loss)}"))
                    self._steps.append(c.step)
                yield OptionList(*options, id="checkpoints")
            with VerticalScroll(id="param-rows"):
                for name in self.editable:
                    with Horizontal(classes="param-row"):
                        yield Label(name, classes="param-name")
                        yield Input(fmt_value(self.values.get(name)), id=f"param-{name}", classes="param-input")
            yield Static("", id="dialog-error")
            with Horizontal(classes="buttons"):
                yield Button(f"{self.confirm_label} (^s)", variant="primary", id="confirm")
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

    def action_cancel(self) -> None:
        self.dismiss(None)

    def action_confirm(self) -> None:
        params: dict[str, Any] = {}
        for name in self.editable:
            text = self.query_one(f"#param-{name}", Input).value
            original = self.values.get(name)
            if name not in self.always_send and text.strip() == fmt_value(original):
                continue
            try:
                params[name] = parse_value(text, original)
            except ValueError:
                self.query_one("#dialog-error", Static).update(f"{name}: cannot parse {text!r}")
                return
        try:  # catch what the engine would refuse while the edits are still on screen
            TrialParams.model_validate({**self.values, **params})
        except ValidationError as e:
            self.query_one("#dialog-error", Static).update(first_error(e))
            return
        step = None
        if self.trial is not None:
            ol = self.query_one("#checkpoints", OptionList)
            if not self._steps:
                self.query_one("#dialog-error", Static).update("this trial has no checkpoint to fork from")
                return
            step = self._steps[ol.highlighted or 0]
        self.dismiss(ParamsRequest(params=params, step=step))

    @on(Button.Pressed, "#confirm")
    @on(Input.Submitted)
    @on(OptionList.OptionSelected)
    def _confirm(self) -> None:
        self.action_confirm()

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


def editable_params(search: dict[str, Any], fork_of_method: str | None) -> list[str]:
    """The searched params plus lr and max_steps; for a fork, without those that would change its tensors."""
    names = list(dict.fromkeys([*search, "learning_rate", "max_steps"]))
    fixed = shape_params(fork_of_method) if fork_of_method else frozenset()
    return [n for n in names if n not in fixed]
