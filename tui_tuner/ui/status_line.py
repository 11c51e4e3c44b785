"""The header: study, phase, elapsed, ETA, best eval loss; the budget, slots and trial counts; or what loads."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui_tuner.engine.snapshot import SweepSnapshot
from tui_tuner.eta import sweep_eta
from tui_tuner.format import fmt_duration
from tui_tuner.state_words import ALARMING, COUNT_WORDS, count_words
from tui_tuner.sweep_words import best_so_far, best_words, budget_words, slot_words


def fmt_elapsed(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


# A part of a header line: (text, style, rank). A line too wide for the terminal drops its parts of the highest
# rank first, the last of them first; rank 0 is never dropped.
Part = tuple[str, str, int]
SEP = "  "


def status_text(snap: SweepSnapshot, preset: str = "", width: int = 80, full_steps: int | None = None) -> Text:
    """The two header lines at `width` columns; `full_steps` (the preset's max_steps) sizes the sweep ETA while
    no sampler trial has ended yet."""
    if snap.phase == "loading":
        return loading_text(snap, preset)
    t = Text()
    _append_line(t, head_parts(snap, full_steps), width, lead="")  # the study's name carries its own spaces
    t.append("\n")
    _append_line(t, count_parts(snap), width)
    return t


def head_parts(snap: SweepSnapshot, full_steps: int | None = None) -> list[Part]:
    """Line 1: what runs, how long it ran and has left, and the best eval loss so far."""
    state = "HALTED" if snap.halted else snap.phase
    best = best_so_far(snap)
    best_style = "" if best is None else "bold green" if best.state == "complete" else "green"
    parts: list[Part] = [(f" {snap.study_name} ", "bold reverse", 0), (f"{snap.sampler}/{snap.pruner}", "", 3),
                         (fmt_elapsed(snap.elapsed), "", 2), (state, "bold red" if snap.halted else "", 0)]
    if snap.phase == "running" and not snap.halted:
        parts.append((f"eta {fmt_duration(sweep_eta(snap, full_steps))}", "", 1))
    parts.append((best_words(snap), best_style, 0))
    if len(snap.workers) > 1:  # a study shared by workers on several boxes: how many, and any gone quiet
        alive = sum(1 for w in snap.workers if w.get("alive"))
        lost = sum(1 for w in snap.workers if not w.get("alive") and w.get("phase") != "stopped")
        parts.append((f"workers {alive}" + (f" ({lost} lost)" if lost else ""), "bold red" if lost else "", 1))
    return parts


def count_parts(snap: SweepSnapshot) -> list[Part]:
    """Line 2: the sampler budget and the trials outside it, running against the concurrency (and why more run
    when they do), then the other counts: when the line is too wide, zero counts go first, then the ones shown
    only when non-zero (pruned, killed...), then done and queued; failed ones (in red) last."""
    run, why = slot_words(snap)
    parts: list[Part] = [(budget_words(snap), "bold", 0), (run, "bold", 0)]
    if why:
        parts.append((f"({why})", "yellow", 0))
    always = {label for label, _, shown in COUNT_WORDS if shown}
    for label, n in count_words(snap.counts):
        if label != "run":
            rank = 4 if not n else 1 if label in ALARMING else 2 if label in always else 3
            parts.append((f"{label} {n}", "bold red" if label in ALARMING and n else "", rank))
    return parts


def fit_parts(parts: list[Part], width: int) -> list[Part]:
    """The parts that fit `width` once joined, dropping the highest-ranked first."""
    kept = list(parts)
    while len(SEP.join(p[0] for p in kept)) > width and (rank := max(p[2] for p in kept)) > 0:
        kept.pop(max(i for i, p in enumerate(kept) if p[2] == rank))
    return kept


def _append_line(t: Text, parts: list[Part], width: int, lead: str = " ") -> None:
    t.append(lead)
    for i, (text, style, _) in enumerate(fit_parts(parts, width - len(lead))):
        t.append(SEP if i else "")
        t.append(text, style=style)


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

    def __init__(self, preset: str = "", full_steps: int | None = None, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.preset = preset
        self.full_steps = full_steps
        self._last = ""
        self._snap: SweepSnapshot | None = None

    def show(self, snap: SweepSnapshot) -> None:
        self._snap = snap
        text = status_text(snap, self.preset, self.size.width or 80, self.full_steps)
        if text.plain != self._last:
            self._last = text.plain
            self.update(text, layout=False)  # fixed height: repaint, no screen layout

    def on_resize(self) -> None:
        if self._snap is not None:  # the words that fit have changed: refit now, not at the next snapshot
            self.show(self._snap)
