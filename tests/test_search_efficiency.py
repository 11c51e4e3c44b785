"""benchmarks/search_efficiency.py: trial-steps scoring on hand-made data, the hf arm's Trainer plumbing."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.search_scoring import (
    Timeline,
    median_steps_to_reach,
    run_dir_timeline,
    running_best,
    steps_to_reach,
)


def test_steps_to_reach_is_the_first_record_at_or_below_the_target() -> None:
    records = [(50, 2.0), (100, 1.5), (150, 1.5), (200, 1.2), (250, 1.1)]
    assert steps_to_reach(records, 1.5) == 100
    assert steps_to_reach(records, 1.2) == 200
    assert steps_to_reach(records, 3.0) == 50
    assert steps_to_reach(records, 1.0) is None
    assert steps_to_reach([], 1.0) is None


def test_running_best_keeps_the_minimum_and_skips_nan() -> None:
    assert running_best([(10, 2.0), (20, 2.5), (30, math.nan), (40, 1.0)]) == [
        (10, 2.0), (20, 2.0), (30, 2.0), (40, 1.0)]


def test_a_seed_that_never_reaches_counts_as_infinite_in_the_median() -> None:
    fast, slow, never = (Timeline([(s, b)], s) for s, b in ((100, 1.0), (300, 1.0), (50, 9.0)))
    assert median_steps_to_reach([fast, slow, never], 1.0) == 300  # median of 100, 300, inf
    assert median_steps_to_reach([fast, never, never], 1.0) is None
    assert median_steps_to_reach([fast, slow], 1.0) == 200


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_run_dir_timeline_interleaves_trials_by_wall_time(tmp_path: Path) -> None:
    # Trial 0 trains 3 steps (t=1..3) and evals at t=3.5; trial 1 trains 2 steps at t=1.5, 2.5, evals at 2.6, then
    # is pruned: by t=2.6 five steps were spent in all (0: 1, 2; 1: 1.5, 2.5) and one more before trial 0's eval.
    _write(tmp_path / "trials" / "0" / "metrics.jsonl",
           [{"step": s, "loss": 1.0, "time": t} for s, t in ((1, 1.0), (2, 2.0), (3, 3.0))]
           + [{"step": 3, "eval_loss": 1.2, "time": 3.5}])
    _write(tmp_path / "trials" / "1" / "metrics.jsonl",
           [{"step": s, "loss": 1.0, "time": t} for s, t in ((1, 1.5), (2, 2.5))]
           + [{"step": 2, "eval_loss": 1.4, "time": 2.6}])
    t = run_dir_timeline(tmp_path)
    assert t.records == [(4, 1.4), (5, 1.2)] and t.total_steps == 5 and t.best == 1.2
    assert steps_to_reach(t.records, 1.3) == 5


def test_hf_arm_runs_transformers_hyperparameter_search_on_the_task() -> None:
    from benchmarks.hf_arm import run_hf
    from benchmarks.markov_task import task_preset
    from tui_tuner.training.finetune import prepare_data

    preset = task_preset(params={"max_steps": 4, "eval_interval": 2, "warmup_steps": 0, "eval_batches": 2},
                         search={})
    data = prepare_data(preset.model.name, preset.data)[1]
    t = run_hf(preset, data, n_trials=2, seed=0)
    assert [s for s, _ in t.records] == [2, 4, 6, 8] and t.total_steps == 8
    assert all(math.isfinite(b) and 0 < b < 10 for _, b in t.records)


def test_the_engine_arms_build_a_valid_preset_on_this_build() -> None:
    from benchmarks.search_efficiency import unsupported

    assert unsupported("tpe-median") is None and unsupported("tpe-hyperband") is None and unsupported("hf") is None


def test_saved_timelines_score_together_and_mixed_budgets_are_refused(tmp_path: Path) -> None:
    import pytest

    from benchmarks.search_efficiency import load_timelines, save_timelines

    hf = [Timeline([(300, 1.2), (600, 1.0)], 600), Timeline([(300, 1.1)], 300)]
    gp = [Timeline([(100, 1.05)], 150)]
    save_timelines(tmp_path / "gp-median.json", gp, 30)
    save_timelines(tmp_path / "hf.json", hf, 30)
    loaded = load_timelines(tmp_path)
    assert list(loaded) == ["hf", "gp-median"]  # the baseline first, whatever the file order
    assert loaded["hf"] == hf and loaded["gp-median"] == gp
    save_timelines(tmp_path / "promote.json", gp, 16)
    with pytest.raises(SystemExit, match="different budgets"):
        load_timelines(tmp_path)


def test_the_slack_table_scores_every_arm_against_hf_at_the_same_looser_targets() -> None:
    from benchmarks.search_efficiency import slack_table

    hf = [Timeline([(300, 1.05), (600, 1.01)], 900), Timeline([(300, 1.03), (900, 1.0)], 900),
          Timeline([(300, 1.06)], 900)]
    gp = [Timeline([(100, 1.04), (400, 1.02)], 500)] * 3
    rows = {line.split()[0]: line.split()[-3:] for line in slack_table({"hf": hf, "gp": gp}, 1.0).splitlines()[2:]}
    # 1.01: hf at 600, 900, never (median 900), gp never; 1.02: gp at 400 of hf's 900; 1.05: 100 of hf's 300.
    assert rows == {"hf": ["1.000", "1.000", "1.000"], "gp": ["never", "0.444", "0.333"]}
