"""Headless output (issue 14, defect 13): a line per change with its numbers, a one-line summary, and a final
table that fits the terminal without breaking a word."""

from __future__ import annotations

import io
import re

import pytest

from tests.test_ui_snapshots import FakeSweep
from tui_tuner.headless import run_headless
from tui_tuner.report import progress_table, summary_line


@pytest.mark.parametrize("width", [60, 80, 120])
def test_progress_table_fits_the_width_and_keeps_words_whole(width: int) -> None:
    snap = FakeSweep().snapshot()
    table = progress_table(snap, width)
    assert max(len(line) for line in table.splitlines()) <= width, table
    words = table.split()
    for t in snap.trials:  # every param and the fork lineage survive whole, on the row or below it
        for k in ("lr=", "wd="):
            assert not t.params or any(w.startswith(k) and len(w) > len(k) for w in words)
    assert "#1@400" in words and "best 1.070 (#0)" in table  # the best is never split across lines
    head = table.splitlines()[1 if width < 85 else 0]
    assert ("best 1.070 (#0)" in head) or width < 85
    assert ("tok/s" in table) == (width >= 77)  # columns the width cannot hold go, the rest stay aligned


def test_summary_line_is_one_line_within_the_width() -> None:
    snap = FakeSweep().snapshot()
    for width in (80, 120, 200):
        line = summary_line(snap, width)
        assert "\n" not in line and len(line) <= width, line
    assert summary_line(snap, 200, full_steps=1000) == (
        "-- 754s done 1 run 2 paused 1 queued 1 pruned 1 failed 0 eta 20m37s best 1.070 (#0)  "
        "#1 640/1000 1.258  #2 420/1000 1.719  #4 560/1000 1.683")
    # Narrower: the zero count goes first, then the optional ones; trials that do not fit are counted, not cut.
    assert summary_line(snap, 80, full_steps=1000) == (
        "-- 754s done 1 run 2 paused 1 queued 1 eta 20m37s best 1.070 (#0)  +3 active")


def test_headless_prints_changes_not_tables(make_sweep, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    sweep = make_sweep(params={"max_steps": 30, "eval_interval": 10, "batch_size": 8, "eval_batches": 1},
                       study={"n_trials": 3, "concurrency": 2, "pruner": "none"},
                       search={"learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                               "weight_decay": {"type": "float", "low": 0.0, "high": 0.1}})
    sweep.start()
    out = io.StringIO()
    assert run_headless(sweep, summary_every=1.0, out=out) == 0
    lines = out.getvalue().splitlines()
    text = re.sub(r"\n {11}(?=\S)", " ", out.getvalue())  # an event line wrapped under its clock, joined
    # Within 80 columns, wrapped between words; only a word longer than a line (a path) may overflow.
    # (The run directory line is the exception: it is kept whole, for the resume command in it to be pasted.)
    assert all(len(line) <= 80 or " " not in line.strip() for line in lines[:-1]), text
    assert any(line.strip() == str(sweep.run_dir / "trials") or "trials/" in line for line in lines)
    for n in range(3):  # each trial: started with its params, completed with its steps, best eval and time
        assert re.search(rf"^\[\d\d:\d\d:\d\d\] trial {n} started: lr=\S+ wd=\S+$", text, re.M), text
        assert re.search(rf"trial {n} completed: eval loss \S+ \[30/30 steps, \d+s, best \S+\]$", text, re.M), text
    assert " starts" not in text  # the "starting" event is folded into "started"
    best = sweep.snapshot()
    assert re.search(r"new best: trial #\d, eval loss \S+$", text, re.M)
    assert f"new best: trial #{best.best_trial}, eval loss" in text.split("sweep finished")[0]
    # The whole table only once, at the end; progress in between is one line each.
    assert text.count("   # state") == 1 and text.index("   # state") > text.index("sweep finished")
    summaries = [line for line in lines if line.startswith("-- ") and not line.startswith(f"-- {best.study_name}")]
    assert summaries and all(re.match(r"-- \d+s done \d+ run \d+ .* eta (-|\S*\d[smhd]) best ", line)
                             for line in summaries), summaries
