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
from tui_tuner.eta import trial_elapsed, trial_eta
from tui_tuner.format import fmt_bytes, fmt_count, fmt_duration, fmt_loss, fmt_lr, fmt_rate, fmt_steps, fmt_value
from tui_tuner.report import fit
from tui_tuner.state_words import end_reason, lineage_words, state_word
from tui_tuner.ui.charts import LossChart, LrChart
from tui_tuner.ui.source import SweepSource

TEXT_WIDTH = 38  # the left column's text at 80x24 (its min width, less padding), until it is laid out
SEARCHED, OVERRIDE = "*", "+"  # marks after a param's value


def _pairs(chunks: list[str], width: int) -> str:
    """"label value" pairs joined on lines of `width`, a line broken only between pairs."""
    return fit([c for c in chunks if c], width, indent="")


def _rows(items: list[tuple[str, str]], width: int, least: int = 12) -> list[str]:
    """One "name value" entry per item: names padded to the longest (cut with "…" where that would leave the
    value under `least` columns); a long value goes on in its own column, never under the name."""
    if not items:
        return []
    name_w = min(max(len(k) for k, _ in items), max(8, width - 3 - least))
    room = max(least, width - 3 - name_w)
    entries = []
    for k, v in items:
        name = k if len(k) <= name_w else k[: name_w - 1] + "…"
        chunks = [v[i:i + room] for i in range(0, len(v), room)] or [""]
        entries.append("\n".join(f"  {name if i == 0 else '':<{name_w}} {c}" for i, c in enumerate(chunks)))
    return entries


def detail_text(source: SweepSource, t: TrialSnapshot, width: int = TEXT_WIDTH) -> Text:
    """Every field of the trial as label/value pairs that never break apart at `width` columns."""
    out = Text()
    out.append(f"trial #{t.number}  {state_word(t.state, t.user_attrs)}", style="bold")
    lineage = lineage_words(t.origin, t.parent, t.fork_step, t.user_attrs) if t.parent is not None else ""
    out.append("\n" + _pairs([f"step {fmt_steps(t.step, t.total_steps)}", f"origin {t.origin}", lineage], width))
    short, why = end_reason(t.state, t.user_attrs)
    if why:
        out.append(f"\nstopped ({short}): {why}", style="bold red" if t.state == "failed" else "yellow")
    elif t.error:
        out.append(f"\nerror: {t.error}", style="bold red")
    out.append("\n" + _pairs([f"elapsed {fmt_duration(trial_elapsed(t))}", f"steps/s {fmt_rate(t.steps_per_s)}",
                              f"eta {fmt_duration(trial_eta(t))}"], width))
    out.append("\n" + _pairs([f"loss {fmt_loss(t.loss)}", f"eval {fmt_loss(t.eval_loss)}",
                              f"best eval {fmt_loss(t.best_eval_loss)}", f"lr {fmt_lr(t.lr)}",
                              f"grad norm {fmt_loss(t.grad_norm)}", f"tok/s {fmt_rate(t.tokens_per_s)}",
                              f"mem {fmt_bytes(t.mem_bytes)}", f"peak {fmt_bytes(t.peak_mem_bytes)}",
                              f"own {fmt_bytes(t.own_mem_bytes)}"], width) + "\n")
    values = {**source.preset.params.model_dump(), **t.params, **t.overrides}
    out.append("\nparams", style="bold underline")
    out.append(f"  {SEARCHED} searched, {OVERRIDE} override\n", style="dim")
    marks = {k: f" {SEARCHED}" if k in t.params else f" {OVERRIDE}" if k in t.overrides else "" for k in values}
    for k, entry in zip(values, _rows([(k, fmt_value(v) + marks[k]) for k, v in values.items()], width),
                        strict=True):
        out.append(entry + "\n", style="bold" if marks[k] else "")
    attrs = t.user_attrs  # the engine's copy: reading the study here would wait on its lock
    out.append("\nOptuna user attrs\n", style="bold underline")
    out.append("\n".join(_rows([(k, fmt_value(v)) for k, v in attrs.items()], width)) + "\n" if attrs else "")
    if not attrs:
        out.append("  (none)\n", style="dim")
    out.append("\ncheckpoints", style="bold underline")
    out.append(f"  (under {source.run_dir})\n", style="dim")  # once: full paths would wrap at 80 columns
    steps = [fmt_count(c.step) for c in t.checkpoints]
    step_w = max([4, *map(len, steps)])
    if t.checkpoints:
        out.append(f"  {'step':>{step_w}} {'eval':>6}  path\n", style="dim")
    for c, step in zip(t.checkpoints, steps, strict=True):
        out.append(f"  {step:>{step_w}} {fmt_loss(c.eval_loss):>6}  {_under(c.path, source.run_dir)}\n")
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

    def on_resize(self) -> None:
        self.call_after_refresh(self.force_redraw)  # once laid out: the text is fit to its column's new width

    def force_redraw(self) -> None:
        self._version = None
        self.redraw()

    def redraw(self) -> None:
        snap = self.source.snapshot()
        t = next((x for x in snap.trials if x.number == self.number), None)
        if t is None or t.version == self._version:
            return
        self._version = t.version
        text = self.query_one("#detail-text", Static)
        text.update(detail_text(self.source, t, text.size.width or TEXT_WIDTH))
        log_y = bool(getattr(self.app, "log_y", False))
        self.query_one(LossChart).draw(self.source, snap, self.number, log_y)
        self.query_one(LrChart).draw(self.source, snap, self.number)


def _under(path: str, root: Path) -> str:
    p = Path(path)
    return str(p.relative_to(root)) if p.is_relative_to(root) else path
