"""Help screen: every key binding of the main screen with what it does."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

HELP = """\
[b]tui-tuner keys[/b]

  [b]↑/↓[/b]      select a trial (drives the charts)
  [b]enter[/b]    trial detail: all params, Optuna user attrs, checkpoints
  [b]t[/b]        lineage tree: forks and PBT clones, who cloned whom, when, what changed
  [b]c[/b]        mark the selected trial; c on another compares the two side by side
  [b]p[/b]        pause / resume the selected trial
  [b]k[/b]        kill the selected trial (asks; Optuna records it PRUNED)
  [b]f[/b]        fork the selected trial from a checkpoint, with edited params
  [b]n[/b]        new trial with chosen params (runs next)
  [b]+ / -[/b]    raise / lower concurrency
  [b]s[/b]        cycle the table's sort column
  [b]h[/b]        hide / show trials that ended early (pruned, failed, killed...)
  [b]l[/b]        log-scale the loss chart
  [b]1-5[/b]      show the Loss / LR / System / Events / Insight panel (wide: zoom it; again: all)
  [b][ / ][/b]    Insight: the previous / next param (importances, param vs eval loss)
  [b]ctrl+p[/b]   command palette (every action)
  [b]q[/b]        quit: running trials checkpoint and stop (asks first)

States are written out: waiting, running, paused, complete, pruned, killed, fail.
Press escape or ? to close.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss(None)", "Close", id="help.close")]

    def __init__(self) -> None:
        super().__init__(classes="dialog-screen")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog help-dialog"):
            yield Static(HELP)
