"""The header/status line: study, phase, trial counts, best eval loss, elapsed, concurrency; or what is loading."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui_tuner.engine.snapshot import SweepSnapshot
from tui_tuner.format import fmt_float
from tui_tuner.state_words import ALARMING, count_words


def fmt_elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def status_text(snap: SweepSnapshot, preset: str = "") -> Text:
    if snap.phase == "loading":
        return loading_text(snap, preset)
    c = snap.counts
    started = sum(v for k, v in c.items() if k not in ("waiting", "cancelled"))  # cancelled ones never ran
    best = (f"{fmt_float(snap.best_value)} (#{snap.best_trial})" if snap.best_trial is not None else "-")
    state = "HALTED" if snap.halted else snap.phase
    t = Text()
    t.append(f" {snap.study_name} ", style="bold reverse")
    t.append(f" {snap.sampler}/{snap.pruner}  {fmt_elapsed(snap.elapsed)} ")
    t.append(state, style="bold red" if snap.halted else "")
    t.append("  ")
    t.append(f"conc {snap.concurrency}", style="bold")
    t.append(f"  best {best}", style="bold green" if snap.best_trial is not None else "")
    if len(snap.workers) > 1:  # a study shared by workers on several boxes: how many, and any gone quiet
        alive = sum(1 for w in snap.workers if w.get("alive"))
        lost = sum(1 for w in snap.workers if not w.get("alive") and w.get("phase") != "stopped")
        t.append(f"  workers {alive}" + (f" ({lost} lost)" if lost else ""), style="bold red" if lost else "")
    t.append("\n")
    t.append(f" {started} trials, budget {snap.n_trials}: ")
    for label, n in count_words(c):
        t.append(f"{label} {n}  ", style="bold red" if label in ALARMING and n else "")
    return t


def loading_text(snap: SweepSnapshot, preset: str) -> Text:
    """While `start()` loads the model and data: what is loading, and what will run once it has."""
    t = Text()
    t.append(f" {snap.study_name} ", style="bold reverse")
    t.append(f" preset {preset}  " if preset else " ")
    t.append(snap.loading or "loading model…", style="bold")
    t.append(f"\n budget {snap.n_trials} trials, {snap.concurrency} at a time, {snap.sampler}/{snap.pruner}")
    return t


class StatusLine(Static):
    """Two lines of sweep-wide status, re-rendered only when their text changes."""

    def __init__(self, preset: str = "", **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.preset = preset
        self._last = ""

    def show(self, snap: SweepSnapshot) -> None:
        text = status_text(snap, self.preset)
        if text.plain != self._last:
            self._last = text.plain
            self.update(text, layout=False)  # fixed height: repaint, no screen layout
