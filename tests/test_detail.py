"""The trial detail screen's text and charts at narrow widths (issue 14, defect 9): label/value pairs never
break apart, the stop reason is told in full, and x-axis ticks are as many as the width holds."""

from __future__ import annotations

import re

from textual_plot import NumericAxisFormatter

from tests.test_ui_snapshots import TRIALS, FakeSweep
from tui_tuner.ui.charts import TICK_ROOM, StepAxisFormatter, step_ticks
from tui_tuner.ui.detail import detail_text


def test_the_text_fits_its_column_without_splitting_a_pair() -> None:
    for width in (36, 60):
        lines = detail_text(FakeSweep(), TRIALS[3], width).plain.splitlines()  # type: ignore[arg-type]
        assert all(len(line) <= width for line in lines if not line.startswith("stopped")), lines
        for pair in ("best eval 2.215", "lr 4.0e-3", "tok/s 12.3k", "peak 413M", "step 300/1000"):
            assert any(pair in line for line in lines), (pair, lines)
        assert any(line.startswith("stopped (pruner): pruned at step 300") for line in lines)
        lr = next(line for line in lines if line.strip().startswith("learning_rate"))
        assert re.fullmatch(r"\s+learning_rate\s+0\.008 \*", lr), lr  # the value beside its name, marked searched


def test_x_ticks_follow_the_width() -> None:
    assert step_ticks(32) == 32 // TICK_ROOM and step_ticks(5) == 2
    narrow = StepAxisFormatter(step_ticks(32)).get_ticks(0, 2000)
    assert 2 <= len(narrow) <= 4 < len(NumericAxisFormatter().get_ticks(0, 2000))
    labels = StepAxisFormatter(4).get_labels_for_ticks(narrow)
    assert all(re.fullmatch(r"\d+", label) for label in labels)  # steps as counts: 500, not 500.0
