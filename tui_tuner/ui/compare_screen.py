"""The comparison screen: two trials side by side (params, state, evals, lineage) and their curves overlaid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual_plot import HiResMode

from tui_tuner.engine.snapshot import SweepSnapshot, TrialSnapshot
from tui_tuner.format import fmt_loss, fmt_value
from tui_tuner.lineage import ancestry
from tui_tuner.state_words import state_word
from tui_tuner.ui.charts import Chart, LossAxisFormatter, LrAxisFormatter, _xy
from tui_tuner.ui.source import SweepSource

COLORS = ("bold bright_yellow", "bold bright_magenta")  # the first trial's, the second's (charts and headers)
DIFFERS = "bold reverse"


def lineage_line(trials: Sequence[TrialSnapshot], t: TrialSnapshot) -> str:
    """Where its weights came from, oldest first: `#1 > #4@400` (a fork of #1 at step 400); `—` for a root."""
    chain = ancestry(trials, t.number)
    if len(chain) < 2:
        return "—"
    return " > ".join(f"#{c.number}" + (f"@{c.fork_step}" if i and c.fork_step is not None else "")
                      for i, c in enumerate(chain))


def compare_rows(source: SweepSource, trials: Sequence[TrialSnapshot], a: TrialSnapshot,
                 b: TrialSnapshot) -> list[tuple[str, str, str, bool]]:
    """(what, a's, b's, differ) for every row: the run first, then the searched params and any param a trial
    overrides (fixed params both share are left out: they cannot differ)."""

    def run_facts(t: TrialSnapshot) -> list[str]:
        return [state_word(t.state, t.user_attrs), t.origin, f"{t.step}/{t.total_steps or '?'}",
                fmt_loss(t.best_eval_loss), fmt_loss(t.eval_loss), fmt_loss(t.loss),
                ", ".join(sorted(t.overrides)) or "—", lineage_line(trials, t)]

    names = ("state", "origin", "step", "best eval", "last eval", "train loss", "overrides", "lineage")
    rows = [(n, x, y, x != y) for n, x, y in zip(names, run_facts(a), run_facts(b), strict=True)]
    fixed = source.preset.params.model_dump()
    va, vb = _values(fixed, a), _values(fixed, b)
    keys = [*source.preset.search, *sorted((set(a.overrides) | set(b.overrides)) - set(source.preset.search))]
    for k in keys:
        x, y = fmt_value(va.get(k)), fmt_value(vb.get(k))
        rows.append((k, x, y, va.get(k) != vb.get(k)))
    return rows


def _values(fixed: dict[str, Any], t: TrialSnapshot) -> dict[str, Any]:
    return {**fixed, **t.params, **t.overrides}


def compare_table(rows: list[tuple[str, str, str, bool]], a: int, b: int) -> Table:
    table = Table(box=None, pad_edge=False, expand=True, show_edge=False)
    table.add_column("", style="bold", no_wrap=True)
    table.add_column(Text(f"#{a}", style=COLORS[0]), overflow="fold")
    table.add_column(Text(f"#{b}", style=COLORS[1]), overflow="fold")
    for what, x, y, differ in rows:
        style = DIFFERS if differ else ""
        table.add_row(what, Text(x, style=style), Text(y, style=style))
    return table


class OverlayChart(Chart):
    """A metric of both trials on one chart, in their colors, with a legend; evals as markers on the loss one."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.set_reactive(Chart.margin_bottom, 3)  # ticks, then the x label saying which metric this is

    def draw(self, source: SweepSource, numbers: tuple[int, int], key: str, label: str,
             marks: str | None = None) -> None:
        self.clear()
        self.set_y_formatter(LrAxisFormatter() if key == "lr" else LossAxisFormatter())
        for n, color in zip(numbers, COLORS, strict=True):
            xs, ys = _xy(source.series(n, key, self.max_points))
            self.plot(xs, ys, line_style=color, hires_mode=HiResMode.BRAILLE, label=f"#{n}")
            if marks is not None:
                xs, ys = _xy(source.series(n, marks, self.max_points))
                if xs:
                    self.scatter(xs, ys, marker="●", marker_style=color)
        self.set_xlabel(label)
        self.show_legend()


class CompareScreen(Screen[None]):
    """Two trials, redrawn once a second while either moves; escape goes back."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,c,q", "app.pop_screen", "Back", id="compare.back")]

    def __init__(self, source: SweepSource, a: int, b: int) -> None:
        super().__init__()
        self.source = source
        self.numbers = (a, b)
        self._versions: tuple[int | None, int | None] | None = None
        self.rows: list[tuple[str, str, str, bool]] = []  # what the table shows (what, a's, b's, differ)

    def compose(self) -> ComposeResult:
        a, b = self.numbers
        yield Static(Text.assemble("Compare ", (f"#{a}", COLORS[0]), " and ", (f"#{b}", COLORS[1]),
                                   " · differences ", ("highlighted", DIFFERS)), id="compare-title")
        with Horizontal(id="compare"):
            with VerticalScroll(id="compare-info"):
                yield Static("", id="compare-table")
            with Vertical(id="compare-charts"):
                yield OverlayChart(id="compare-loss")
                yield OverlayChart(id="compare-lr")
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(1.0, self.redraw)

    def redraw(self) -> None:
        snap = self.source.snapshot()
        pair = [_trial(snap, n) for n in self.numbers]
        versions = (pair[0].version if pair[0] else None, pair[1].version if pair[1] else None)
        if versions == self._versions:
            return
        self._versions = versions
        a, b = pair
        if a is None or b is None:
            missing = self.numbers[0] if a is None else self.numbers[1]
            self.query_one("#compare-table", Static).update(Text(f"no trial #{missing} in this sweep", "red"))
            return
        self.rows = compare_rows(self.source, snap.trials, a, b)
        self.query_one("#compare-table", Static).update(compare_table(self.rows, a.number, b.number))
        loss, lr = self.query_one("#compare-loss", OverlayChart), self.query_one("#compare-lr", OverlayChart)
        loss.draw(self.source, self.numbers, "loss", "step · train loss (eval ●)", marks="eval_loss")
        lr.draw(self.source, self.numbers, "lr", "step · LR")


def _trial(snap: SweepSnapshot, n: int) -> TrialSnapshot | None:
    return next((t for t in snap.trials if t.number == n), None)
