"""Trial detail screen: elapsed, rate and ETA, every param, Optuna user attrs, checkpoints, larger charts."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui_tuner.engine.snapshot import TrialSnapshot
from tui_tuner.eta import fmt_duration, fmt_rate, trial_elapsed, trial_eta
from tui_tuner.format import fmt_bytes, fmt_float, fmt_value
from tui_tuner.state_words import lineage_words, state_word
from tui_tuner.ui.charts import LossChart, LrChart
from tui_tuner.ui.source import SweepSource


def detail_text(source: SweepSource, t: TrialSnapshot) -> Text:
    out = Text()
    out.append(f"trial #{t.number}  {state_word(t.state, t.user_attrs)}", style="bold")
    out.append(f"  step {t.step}/{t.total_steps or '?'}  origin {t.origin}")
    if t.parent is not None:
        out.append(f"  {lineage_words(t.origin, t.parent, t.fork_step, t.user_attrs)}")
    if t.error:
        out.append(f"\nerror: {t.error}", style="bold red")
    out.append(f"\nelapsed {fmt_duration(trial_elapsed(t))}  steps/s {fmt_rate(t.steps_per_s)}"
               f"  eta {fmt_duration(trial_eta(t))}")
    out.append(f"\nloss {fmt_float(t.loss)}  eval {fmt_float(t.eval_loss)}  best eval {fmt_float(t.best_eval_loss)}"
               f"\nlr {fmt_float(t.lr)}  grad norm {fmt_float(t.grad_norm)}  tok/s {fmt_float(t.tokens_per_s, 0)}"
               f"  mem {fmt_bytes(t.mem_bytes)} (peak {fmt_bytes(t.peak_mem_bytes)},"
               f" own {fmt_bytes(t.own_mem_bytes)})\n")
    values = {**source.preset.params.model_dump(), **t.params, **t.overrides}
    out.append("\nparams\n", style="bold underline")
    for k, v in values.items():
        mark = " (searched)" if k in t.params else " (override)" if k in t.overrides else ""
        out.append(f"  {k:<20} {fmt_value(v)}{mark}\n", style="bold" if mark else "")
    attrs = t.user_attrs  # the engine's copy: reading the study here would wait on its lock
    out.append("\nOptuna user attrs\n", style="bold underline")
    for k, v in attrs.items():
        out.append(f"  {k:<20} {fmt_value(v)}\n")
    if not attrs:
        out.append("  (none)\n", style="dim")
    out.append("\ncheckpoints", style="bold underline")
    out.append(f"  (under {source.run_dir})\n", style="dim")  # once: full paths would wrap at 80 columns
    for c in t.checkpoints:
        out.append(f"  step {c.step:>7}  eval {fmt_float(c.eval_loss):>8}  {_under(c.path, source.run_dir)}\n")
    if not t.checkpoints:
        out.append("  (none)\n", style="dim")
    return out


class TrialDetailScreen(Screen[None]):
    """Redraws once a second when the trial's version moved; escape goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "app.pop_screen", "Back", id="detail.back")]

    def __init__(self, source: SweepSource, number: int) -> None:
        super().__init__()
        self.source = source
        self.number = number
        self._version: int | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(id="detail"):
            with VerticalScroll(id="detail-info"):
                yield Static("", id="detail-text")
            with Vertical(id="detail-charts"):
                yield LossChart(id="detail-loss")
                yield LrChart(id="detail-lr")
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(1.0, self.redraw)

    def redraw(self) -> None:
        snap = self.source.snapshot()
        t = next((x for x in snap.trials if x.number == self.number), None)
        if t is None or t.version == self._version:
            return
        self._version = t.version
        self.query_one("#detail-text", Static).update(detail_text(self.source, t))
        log_y = bool(getattr(self.app, "log_y", False))
        self.query_one(LossChart).draw(self.source, snap, self.number, log_y)
        self.query_one(LrChart).draw(self.source, snap, self.number)


def _under(path: str, root: Path) -> str:
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path
