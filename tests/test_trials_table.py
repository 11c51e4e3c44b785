"""The trials table at 80 and 120 columns (issue 14, defects 5 and 6): frozen # and state, widths that fit the
content, the sort marker, the best-trial star, the h filter, the why column; the chart titles and 1-4 in the
wide layout. Pilot tests on the snapshot tests' fixed sweep."""

from __future__ import annotations

import dataclasses
import html
import re
from collections import defaultdict
from typing import Any

import pytest
from rich.text import Text

from tests.test_ui_snapshots import FakeSweep, FakeSystem
from tui_tuner.ui.app import TuiTunerApp
from tui_tuner.ui.trials_table import BEST_MARK, FROZEN, SORT_MARK, TrialsTable, fit_widths

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class BestMoves(FakeSweep):
    """The fixed sweep, with a best trial the test chooses."""

    best = 0

    def snapshot(self) -> Any:
        snap = super().snapshot()
        return dataclasses.replace(snap, best_trial=self.best)


def _app(sweep: FakeSweep | None = None) -> TuiTunerApp:
    return TuiTunerApp(sweep or FakeSweep(), system=FakeSystem(), live=False)  # type: ignore[arg-type]


def screen_lines(app: TuiTunerApp) -> list[str]:
    """The screen as text: the screenshot's <text> elements, unescaped, joined by row."""
    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = defaultdict(list)
    for m in re.finditer(r'<text[^>]*?x="([\d.]+)"[^>]*?y="([\d.]+)"[^>]*>(.*?)</text>', svg, re.S):
        rows[float(m.group(2))].append((float(m.group(1)), html.unescape(re.sub(r"<[^>]+>", "", m.group(3)))))
    return ["".join(t for _, t in sorted(r)).replace("\xa0", " ").rstrip() for _, r in sorted(rows.items())]


def _numbers(table: TrialsTable) -> list[int]:
    return [int(str(table.get_row_at(i)[0]).lstrip(BEST_MARK)) for i in range(table.row_count)]


def _header(app: TuiTunerApp) -> str:
    return next(line for line in screen_lines(app) if line.lstrip().startswith("#"))


async def test_peak_mem_and_params_are_whole_at_120_columns() -> None:
    app = _app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        head = _header(app)
        assert head.rstrip().endswith("peak mem  params"), head
        row = next(line for line in screen_lines(app) if "1000/1000" in line)
        assert "410M" in row and row.rstrip().endswith("lr=3.0e-3 wd=0"), row


async def test_number_and_state_stay_when_the_table_scrolls_right_at_80() -> None:
    app = _app()
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(TrialsTable)
        assert table.fixed_columns == FROZEN == 2
        table.scroll_to(x=table.max_scroll_x, animate=False)
        await pilot.pause()
        head = _header(app)
        assert re.match(r"^ #\s+state\s", head) and "params" in head, head  # frozen, and the far end in view
        row = next(line for line in screen_lines(app) if "complete" in line)
        assert "lr=3.0e-3 wd=0" in row and f"{BEST_MARK}0" in row, row


async def test_the_sort_marker_is_seen_on_every_sorted_column() -> None:
    app = _app()
    async with app.run_test(size=(80, 24)) as pilot:
        for label in ("best", "loss", "state", "step"):
            await pilot.press("s")
            await pilot.pause()
            assert f"{SORT_MARK}{label}" in _header(app), _header(app)


async def test_the_best_complete_trial_is_starred_and_the_star_moves() -> None:
    sweep = BestMoves()
    app = _app(sweep)
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(TrialsTable)
        starred = [n for n in range(6) if str(table.get_cell(str(n), "number")).startswith(BEST_MARK)]
        assert starred == [0]
        sweep.best = 2
        app.refresh_view()
        await pilot.pause()
        starred = [n for n in range(6) if str(table.get_cell(str(n), "number")).startswith(BEST_MARK)]
        assert starred == [2]
        assert any(f"{BEST_MARK}2" in line for line in screen_lines(app))


async def test_h_hides_trials_that_ended_early_and_the_title_says_so() -> None:
    app = _app()
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(TrialsTable)
        assert _numbers(table) == [0, 1, 2, 3, 4, 5] and not table.border_title
        await pilot.press("h")
        await pilot.pause()
        assert _numbers(table) == [0, 1, 2, 4, 5]  # #3 was pruned
        assert "filter on: 1" in str(table.border_title) and "(h: show all)" in str(table.border_title)
        assert any("filter on: 1" in line for line in screen_lines(app))  # drawn in the table's top border
        await pilot.press("h")
        await pilot.pause()
        assert _numbers(table) == [0, 1, 2, 3, 4, 5] and not table.border_title  # back in its place


async def test_why_column_names_the_pruner() -> None:
    app = _app()
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        table = app.query_one(TrialsTable)
        assert str(table.get_cell("3", "why")) == "pruner" and str(table.get_cell("1", "why")) == ""


async def test_chart_titles_name_the_selected_trial() -> None:
    app = _app()
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        assert "#0" in str(app.query_one("#panel-loss").border_title)
        assert str(app.query_one("#panel-lr").border_title) == "LR #0"
        await pilot.press("down")
        await pilot.pause()
        assert str(app.query_one("#panel-loss").border_title).startswith("Loss #1")
        assert str(app.query_one("#panel-lr").border_title) == "LR #1"


async def test_1_to_4_zoom_a_panel_in_the_wide_layout() -> None:
    app = _app()
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        panels = {p: app.query_one(f"#panel-{p}") for p in ("loss", "lr", "system", "events")}
        assert all(w.region.area for w in panels.values())  # the grid: all four
        full = app.query_one("#panels").region
        for key, name in (("2", "lr"), ("4", "events")):
            await pilot.press(key)
            await pilot.pause()
            assert panels[name].region.width == full.width, name  # alone in the panels' area
            assert [p for p, w in panels.items() if w.region.area] == [name]
        await pilot.press("4")  # the same key again: back to all
        await pilot.pause()
        assert all(w.region.area for w in panels.values())
        assert [n.message for n in app._notifications][-3:] == [
            "LR panel zoomed (2 again: all panels)", "Events panel zoomed (4 again: all panels)", "all panels"]


def test_fit_widths_leave_params_the_room_the_frozen_columns_do_not_take() -> None:
    cols = [("number", "#", None), ("state", "state", None), ("loss", "loss", None), ("params", "params", None)]
    rows = [(Text("★10"), "complete", "1.000", "x" * 200)]
    widths = fit_widths(cols, rows, 80)
    assert widths[:3] == [3, 8, 5]  # ★10; complete; loss + the sort marker's room
    assert widths[3] == 80 - (3 + 2) - (8 + 2) - 2 - 1  # scrolled right, the params end in view
    assert fit_widths(cols, [(Text("1"), "run", "1.000", "lr=1")], 80)[3] == 12  # at least MIN_FLEX
