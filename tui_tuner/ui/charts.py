"""Loss and LR charts on textual-plot: every trial's loss overlaid (selected bright), LR actual vs planned."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence

from rich.console import RenderableType
from textual.app import ComposeResult
from textual.css.query import NoMatches
from textual.widgets import Static
from textual_plot import HiResMode, NumericAxisFormatter, PlotWidget

from tui_tuner.engine.snapshot import SweepSnapshot
from tui_tuner.format import fmt_count, fmt_loss, fmt_lr
from tui_tuner.ui.source import SweepSource

SELECTED = "bold bright_yellow"
OTHER = "grey42"
EVAL = "bold bright_cyan"
PLANNED = "grey50"
PARENT = "blue"  # a fork's curve before its fork step: its parent's


class LossAxisFormatter(NumericAxisFormatter):
    """Loss ticks labelled as the table prints losses."""

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [fmt_loss(t) for t in ticks]


class LogAxisFormatter(NumericAxisFormatter):
    """Ticks placed on log10 values, labelled with the loss itself (textual-plot has no log axis)."""

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [fmt_loss(10**t) for t in ticks]


class LrAxisFormatter(NumericAxisFormatter):
    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [fmt_lr(t) for t in ticks]


class StepAxisFormatter(NumericAxisFormatter):
    """Step ticks, no more than the width holds apart: textual-plot asks for 8 whatever the width, and at 40
    columns "500 100015002000" ran together."""

    def __init__(self, max_ticks: int) -> None:
        self.max_ticks = max_ticks

    def get_ticks(self, min_: float, max_: float, max_ticks: int = 8) -> list[float]:
        # textual-plot's own picker takes max_ticks as a hint (one step coarser at most): this one keeps to it.
        most = max(2, min(max_ticks, self.max_ticks))
        if not max_ > min_:
            return [min_]
        base = 10.0 ** math.floor(math.log10((max_ - min_) / most))
        for m in (1, 2, 5, 10, 20, 50):
            every = m * base
            first, last = math.ceil(min_ / every), math.floor(max_ / every)
            if last - first + 1 <= most:
                return [i * every for i in range(first, last + 1)]
        return [min_, max_]

    def get_labels_for_ticks(self, ticks: Sequence[float]) -> list[str]:
        return [fmt_count(t) for t in ticks]


TICK_ROOM = 8  # columns per x tick label: "20000" and the gap to the next


def step_ticks(plot_width: int) -> int:
    """How many x ticks a plot `plot_width` columns wide holds without its labels touching."""
    return max(2, plot_width // TICK_ROOM)


def _xy(points: Sequence[tuple[float, float]], log_y: bool = False) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for x, y in points:
        if log_y:
            if y <= 0 or not math.isfinite(y):
                continue
            y = math.log10(y)
        xs.append(x)
        ys.append(y)
    return xs, ys


class Chart(PlotWidget, can_focus=False):
    """A PlotWidget that never takes focus (its +/- zoom keys would shadow the app's) and has no legend."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(allow_pan_and_zoom=False, **kwargs)  # type: ignore[arg-type]
        # set without watchers: PlotWidget.on_mount applies the margins once its grid exists
        self.set_reactive(PlotWidget.margin_top, 0)
        self.set_reactive(PlotWidget.margin_bottom, 2)
        self.set_reactive(PlotWidget.margin_left, 8)

        self.draw_cost_s = 0.0  # CPU seconds of the last redraw (series pulls + rasterising), for pacing
        self._pulled_s = 0.0

    def fit_x_axis(self) -> None:
        """As many step ticks as the plot's width holds (call before plotting: the width may have changed)."""
        self.set_x_formatter(StepAxisFormatter(step_ticks(self.size.width - self.margin_left)))

    @property
    def max_points(self) -> int:
        return max(32, self.size.width)

    def timed_draw(self, *args: object) -> None:
        """`draw(*args)` (each chart has its own), timed so the app can pace redraws by their cost."""
        t0 = time.perf_counter()
        self.draw(*args)  # type: ignore[attr-defined]
        self._pulled_s = time.perf_counter() - t0

    def render(self) -> RenderableType:
        if not self._needs_rerender:
            return super().render()
        # textual-plot rasterises at paint time: that is most of a redraw's cost.
        t0 = time.perf_counter()
        result = super().render()
        self.draw_cost_s = self._pulled_s + time.perf_counter() - t0
        return result


class LossChart(Chart):
    """Train loss of every started trial (forks branch off their parent's prefix) and the selected one's evals."""

    def draw(self, source: SweepSource, snap: SweepSnapshot, selected: int | None, log_y: bool) -> None:
        self.clear()
        self.fit_x_axis()
        self.set_y_formatter(LogAxisFormatter() if log_y else LossAxisFormatter())
        pts = self.max_points
        numbers = [t.number for t in snap.trials if t.state != "waiting" and t.number != selected]
        for n in numbers:
            # Dim context lines at half resolution: plot cost follows the number of points, not the width.
            xs, ys = _xy(source.series(n, "loss", pts // 2), log_y)
            if xs:
                self.plot(xs, ys, line_style=OTHER, hires_mode=HiResMode.BRAILLE)
        if selected is not None:
            xs, ys = _xy(source.series(selected, "loss", pts), log_y)
            if xs:
                self.plot(xs, ys, line_style=SELECTED, hires_mode=HiResMode.BRAILLE)
            xs, ys = _xy(source.series(selected, "eval_loss", pts), log_y)
            if xs:
                self.scatter(xs, ys, marker="●", marker_style=EVAL)
        self.set_xlabel(f"step · train loss (#{selected} bright, eval ●){' · log y' if log_y else ''}")


class LrChart(Chart):
    """The selected trial's LR so far over its planned schedule (dim); a fork's curve up to its fork step is its
    parent's (drawn apart, named in the legend), and its plan starts at the fork step."""

    DEFAULT_CSS = """
    LrChart > #chart-note { layer: legend; width: 100%; height: auto; padding: 0 1; display: none; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._plans: dict[tuple[int, int | None, str], list[tuple[int, float]]] = {}
        self.note = ""  # said instead of a curve (a queued trial without a plan yet)

    def compose(self) -> ComposeResult:
        yield from super().compose()
        yield Static("", id="chart-note")

    def _say(self, note: str) -> None:
        self.note = note
        with contextlib.suppress(NoMatches):
            label = self.query_one("#chart-note", Static)
            label.update(note)
            label.display = bool(note)

    def draw(self, source: SweepSource, snap: SweepSnapshot, selected: int | None) -> None:
        self.clear()
        self.fit_x_axis()
        self.set_y_formatter(LrAxisFormatter())
        self._say("")
        if selected is None:
            return
        trial = next((t for t in snap.trials if t.number == selected), None)
        key = (selected, trial.total_steps if trial else None, trial.state if trial else "")
        if key not in self._plans:
            self._plans[key] = source.lr_plan(selected, self.max_points)
        plan = self._plans[key]
        fork_step = trial.fork_step if trial is not None and trial.parent is not None else None
        if fork_step is not None:  # the child's schedule means nothing before it existed
            plan = [(s, lr) for s, lr in plan if s >= fork_step]
        xs, ys = _xy(plan)
        if xs:
            self.plot(xs, ys, line_style=PLANNED, hires_mode=HiResMode.BRAILLE)
        actual = source.series(selected, "lr", self.max_points)
        if fork_step is not None:
            xs, ys = _xy([(s, lr) for s, lr in actual if s <= fork_step])
            if xs:
                self.plot(xs, ys, line_style=PARENT, hires_mode=HiResMode.BRAILLE)
            actual = [(s, lr) for s, lr in actual if s > fork_step]
        xs, ys = _xy(actual)
        if xs:
            self.plot(xs, ys, line_style=SELECTED, hires_mode=HiResMode.BRAILLE)
        if trial is not None and trial.state == "waiting" and not plan:
            missing = [k for k in source.preset.search if k not in trial.params]
            self._say(f"#{selected} is queued: its LR schedule is known once the sampler draws "
                      f"{', '.join(missing) or 'its params'} (when it starts)")
        if fork_step is not None:
            self.set_xlabel(f"step · LR #{selected} bright, parent #{trial.parent} to step {fork_step} blue, "  # type: ignore[union-attr]
                            "plan dim")
        else:
            self.set_xlabel(f"step · LR of #{selected} (planned dim)")

BARS = "▁▂▃▄▅▆▇█"


def sparkline(points: Sequence[tuple[float, float]], width: int, top: float) -> str:
    """`width` bars of the values as a share of `top` (an LR plan against its peak), bucket-averaged."""
    ys = [y for _, y in points]
    if not ys or width < 1 or top <= 0:
        return ""
    out = []
    for i in range(min(width, len(ys))):
        lo, hi = i * len(ys) // min(width, len(ys)), (i + 1) * len(ys) // min(width, len(ys))
        share = sum(ys[lo:hi]) / max(1, hi - lo) / top
        out.append(BARS[max(0, min(len(BARS) - 1, round(share * (len(BARS) - 1))))])
    return "".join(out)
