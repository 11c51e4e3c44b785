"""The Insight panel: param importances as bars beside a param-vs-objective scatter of the finished trials."""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static
from textual_plot import NumericAxisFormatter
from textual_plot.axis_formatter import CategoricalAxisFormatter

from tui_tuner.engine.snapshot import Insight, ParamInsight
from tui_tuner.format import fmt_value
from tui_tuner.ui.charts import EVAL, OTHER, Chart, LogAxisFormatter, LossAxisFormatter

BLOCKS = " ▏▎▍▌▋▊▉█"
BAR_WIDTH = 10
PRUNED = "×"  # pruned and killed trials, at their last reported eval


def bar(share: float, width: int = BAR_WIDTH) -> str:
    """`share` (0..1) of `width` cells in eighth blocks."""
    eighths = round(max(0.0, min(1.0, share)) * width * 8)
    return ("█" * (eighths // 8) + (BLOCKS[eighths % 8] if eighths % 8 else "")).ljust(width)


def bars_text(insight: Insight | None, selected: str | None) -> Text:
    """The importances list (the selected param marked), or why there are none, and the keys that move."""
    out = Text()
    if insight is None:
        return Text("computing param importances…", style="dim")
    pruned = insight.finished - insight.complete
    out.append(f"{insight.method} · {insight.complete} complete", style="bold")
    out.append(f" +{pruned} pruned\n" if pruned else "\n", style="bold")
    if insight.reason:
        out.append(insight.reason + "\n", style="yellow")
    for p in insight.params:
        mark = "▸" if p.name == selected else " "
        share = "" if p.importance is None else f"{bar(p.importance)} {p.importance:4.0%}"
        out.append(f"{mark}{p.name[:16]:<16} {share}\n", style="reverse" if p.name == selected else "")
    # The chart's own x label does not fit its margin at 80×24: the legend is said here
    out.append(f"● complete {PRUNED} pruned · y: eval loss\n", style="dim")
    if len(insight.params) > 1:
        out.append("[ / ]: another param", style="dim")
    return out


class ParamScatter(Chart):
    """One param's value (log x for a log-scale param; a categorical's choices by name) against the objective."""

    def draw(self, param: ParamInsight | None) -> None:
        self.clear()
        self.set_y_formatter(LossAxisFormatter())
        self.set_xticks(None)  # the last param's range and ticks do not carry over
        self.set_xlimits(None, None)
        self.set_ylimits(None, None)
        if param is None:
            self.set_xlabel("no searched param")
            return
        if param.choices:
            self.set_x_formatter(CategoricalAxisFormatter([fmt_value(c) for c in param.choices]))
        else:
            self.set_x_formatter(LogAxisFormatter() if param.log else NumericAxisFormatter())
        ys_all = [p.objective for p in param.points]
        if ys_all:  # a margin above and below: a point on the frame's row would hide in it
            pad = (max(ys_all) - min(ys_all)) * 0.08 or abs(ys_all[0]) * 0.05 or 0.1
            self.set_ylimits(min(ys_all) - pad, max(ys_all) + pad)
        for states, marker, style in ((("complete",), "●", EVAL), (("pruned", "killed"), PRUNED, OTHER)):
            xs, ys = [], []
            for p in param.points:
                x = _x(param, p.value)
                if p.state in states and x is not None:
                    xs.append(x)
                    ys.append(p.objective)
            if xs:
                self.scatter(xs, ys, marker=marker, marker_style=style)
        if param.choices:
            self.set_xlimits(0.5, len(param.choices) + 0.5)  # every choice has a tick, drawn or not
        elif param.bounds is not None:  # the whole searched range: where the sampler has not looked shows too
            lo, hi = (_x(param, v) for v in param.bounds)
            if lo is not None and hi is not None and hi > lo:
                self.set_xlimits(lo, hi)
                # textual-plot's ticks know nothing of log scales or of the width their labels need
                most = max(2, self.size.width // 10)
                self.set_xticks(log_ticks(lo, hi, most) if param.log else None)
        log = " (log x)" if param.log else ""
        self.set_xlabel(f"{param.name}{log} · eval loss (● complete, {PRUNED} pruned at last eval)")


def log_ticks(lo: float, hi: float, most: int) -> list[float] | None:
    """Ticks (log10 values) at 1-2-5, 1-3 or 1 per decade between lo and hi, the densest of those that has at
    most `most`; None (the formatter's own) when fewer than two decade ticks fall in the range."""
    for mults in ((1, 2, 5), (1, 3), (1,)):
        ticks = [e + math.log10(m) for e in range(math.floor(lo), math.ceil(hi) + 1) for m in mults]
        ticks = [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]
        if len(ticks) <= most:
            return ticks if len(ticks) >= 2 else None
    return None


def _x(param: ParamInsight, value: object) -> float | None:
    """Where a value sits on the x axis: a choice's 1-based index (CategoricalAxisFormatter's), log10 for a
    log-scale param, else the number; None if it cannot be placed."""
    if param.choices:
        return float(param.choices.index(value) + 1) if value in param.choices else None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if param.log:
        return math.log10(value) if value > 0 else None
    return float(value)


class InsightPanel(Horizontal):
    """Shows the last Insight the app fetched; `move` picks another param (its scatter)."""

    DEFAULT_CSS = """
    InsightPanel > #insight-bars { width: 36; height: 1fr; padding: 0 1; }
    InsightPanel > #insight-scatter { width: 1fr; height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.insight: Insight | None = None
        self.selected: str | None = None  # the param shown in the scatter (kept across refreshes by name)
        self._chosen = False  # the user picked it: until then the scatter follows the most important param

    def compose(self) -> ComposeResult:
        yield Static(bars_text(None, None), id="insight-bars")
        yield ParamScatter(id="insight-scatter")

    def show(self, insight: Insight) -> None:
        self.insight = insight
        names = [p.name for p in insight.params]
        if not self._chosen or self.selected not in names:
            self.selected = names[0] if names else None
        self._redraw()

    def move(self, delta: int) -> None:
        names = [p.name for p in self.insight.params] if self.insight else []
        if not names:
            return
        i = names.index(self.selected) if self.selected in names else 0
        self.selected = names[(i + delta) % len(names)]
        self._chosen = True
        self._redraw()

    @property
    def param(self) -> ParamInsight | None:
        params = self.insight.params if self.insight else ()
        return next((p for p in params if p.name == self.selected), None)

    def _redraw(self) -> None:
        self.query_one("#insight-bars", Static).update(bars_text(self.insight, self.selected))
        self.query_one(ParamScatter).draw(self.param)
