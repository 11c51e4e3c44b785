"""tui_tuner/eta.py on hand-made snapshots: a trial's elapsed time and ETA, the sweep's ETA, the formats."""

from __future__ import annotations

from typing import Any

import pytest

from tui_tuner.engine.history import RATE_WINDOW, TrialHistory
from tui_tuner.engine.snapshot import SweepSnapshot, TrialSnapshot
from tui_tuner.eta import steps_per_trial, sweep_eta, trial_elapsed, trial_eta
from tui_tuner.format import fmt_duration, fmt_rate


def trial(n: int, state: str, step: int = 0, total: int | None = 100, **kw: Any) -> TrialSnapshot:
    return TrialSnapshot(number=n, state=state, step=step, total_steps=total, params={}, overrides={}, **kw)


def sweep(*trials: TrialSnapshot, n_trials: int = 4, **kw: Any) -> SweepSnapshot:
    fields: dict[str, Any] = {"study_name": "s", "sampler": "tpe", "pruner": "median", "concurrency": 2,
                              "started_at": 0.0, "elapsed": 0.0, "finished": False, **kw}
    return SweepSnapshot(n_trials=n_trials, trials=trials, **fields)


def test_trial_elapsed_runs_until_it_finishes() -> None:
    assert trial_elapsed(trial(0, "waiting")) is None
    assert trial_elapsed(trial(0, "running", started_at=100.0), now=160.0) == 60.0
    assert trial_elapsed(trial(0, "complete", started_at=100.0, finished_at=130.0), now=999.0) == 30.0


def test_trial_eta_is_remaining_steps_over_its_rate_only_while_it_runs() -> None:
    assert trial_eta(trial(0, "running", step=40, steps_per_s=2.0)) == 30.0
    assert trial_eta(trial(0, "paused", step=40, steps_per_s=2.0)) is None  # not moving
    assert trial_eta(trial(0, "running", step=40)) is None  # no rate yet
    assert trial_eta(trial(0, "running", step=40, total=None, steps_per_s=2.0)) is None


def test_sweep_eta_counts_running_queued_and_the_unspent_budget() -> None:
    snap = sweep(trial(0, "complete", step=100, origin="sampler"), trial(1, "pruned", step=20, origin="sampler"),
                 trial(2, "running", step=50, steps_per_s=1.0), trial(3, "running", step=90, steps_per_s=3.0),
                 trial(4, "waiting", total=None, origin="fork", fork_step=40), n_trials=6)
    # left: #2 50 + #3 10 + the fork 100-40 = 60 (a whole trial: the largest total) + 2 unproposed x mean(100, 20)
    assert steps_per_trial(snap) == 60
    assert sweep_eta(snap) == pytest.approx((50 + 10 + 60 + 2 * 60) / 4.0)
    # before any sampler trial ended, a future one is a whole trial: max_steps when given
    early = sweep(trial(0, "running", step=10, steps_per_s=2.0), n_trials=3)
    assert sweep_eta(early) == pytest.approx((90 + 2 * 100) / 2.0)
    assert sweep_eta(early, full_steps=200) == pytest.approx((90 + 2 * 200) / 2.0)


def test_sweep_eta_is_unknown_without_a_rate_or_once_over() -> None:
    assert sweep_eta(sweep(trial(0, "running", step=10))) is None
    assert sweep_eta(sweep(trial(0, "paused", step=10, steps_per_s=2.0))) is None  # nothing moves
    assert sweep_eta(sweep(trial(0, "running", step=10, steps_per_s=2.0), phase="stopping")) is None
    assert sweep_eta(sweep(trial(0, "running", step=10, steps_per_s=2.0), halted="sampler broke")) is None


def test_formats() -> None:
    assert [fmt_duration(s) for s in (None, 45, 725, 4320, 3 * 86400 + 4 * 3600)] == [
        "-", "45s", "12m05s", "1h12m", "3d04h"]
    assert [fmt_rate(r) for r in (None, 0.4123, 3.2, 118.4)] == ["-", "0.41", "3.20", "118"]


def test_history_rate_is_over_the_last_steps_and_reaches_the_snapshot() -> None:
    from pathlib import Path

    from tui_tuner.engine.trial import TrialRun

    h = TrialHistory()
    assert h.steps_per_s is None
    for step in range(1, 101):
        h.record({"step": step, "loss": 1.0, "step_time": 1.0 if step <= 80 else 0.25})
    assert h.steps_per_s == pytest.approx(RATE_WINDOW / (RATE_WINDOW * 0.25))  # only the recent, faster steps
    h.record({"step": 100, "eval_loss": 1.0})  # an eval row has no step time: the rate stays
    assert h.steps_per_s == pytest.approx(4.0)
    run = TrialRun(number=0, trial=None, params=None, searched={}, overrides={}, trial_dir=Path("."), history=h)
    assert run.snapshot().steps_per_s == pytest.approx(4.0)


def test_the_detail_screen_says_elapsed_rate_and_eta() -> None:
    from tests.test_ui_snapshots import T0, TRIALS, FakeSweep
    from tui_tuner.ui.detail import detail_text

    running = detail_text(FakeSweep(), TRIALS[1]).plain  # type: ignore[arg-type]
    assert "steps/s 2.00" in running and "eta 3m00s" in running and "elapsed " in running
    done = detail_text(FakeSweep(), TRIALS[0]).plain  # type: ignore[arg-type]
    assert f"elapsed {fmt_duration(TRIALS[0].finished_at - T0)}" in done  # type: ignore[operator]
    assert "steps/s -" in done and "eta -" in done
