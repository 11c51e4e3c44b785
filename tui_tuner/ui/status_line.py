"""The header/status line: study, sampler/pruner, trial counts, best eval loss, elapsed time, concurrency."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui_tuner.engine.snapshot import SweepSnapshot
from tui_tuner.format import fmt_float


def fmt_elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def status_text(snap: SweepSnapshot) -> Text:
    c = snap.counts
    started = sum(v for k, v in c.items() if k != "waiting")
    best = (f"{fmt_float(snap.best_value)} (#{snap.best_trial})" if snap.best_trial is not None else "-")
    state = "HALTED" if snap.halted else "finished" if snap.finished else "running"
    t = Text()
    t.append(f" {snap.study_name} ", style="bold reverse")
    t.append(f" {snap.sampler}/{snap.pruner}  {fmt_elapsed(snap.elapsed)} ")
    t.append(state, style="bold red" if snap.halted else "")
    t.append("  ")
    t.append(f"conc {snap.concurrency}", style="bold")
    t.append(f"  best {best}\n", style="bold green" if snap.best_trial is not None else "")
    t.append(f" {started} trials, budget {snap.n_trials}: ")
    for label, key in (("done", "complete"), ("run", "running"), ("paused", "paused"), ("queued", "waiting"),
                       ("pruned", "pruned"), ("failed", "failed")):
        t.append(f"{label} {c.get(key, 0)}  ", style="bold red" if key == "failed" and c.get(key) else "")
    return t


class StatusLine(Static):
    """Two lines of sweep-wide status, re-rendered only when their text changes."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self._last = ""

    def show(self, snap: SweepSnapshot) -> None:
        text = status_text(snap)
        if text.plain != self._last:
            self._last = text.plain
            self.update(text, layout=False)  # fixed height: repaint, no screen layout
