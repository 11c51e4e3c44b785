"""Early stopping: the pure counter, and trials that end COMPLETE with their best eval, also across resume and fork."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState as OptunaState

from tests.conftest import wait_for
from tests.fake_backend import FakeBackend, FakeTrainer
from tui_tuner.engine.early_stop import EarlyStop
from tui_tuner.engine.sweep import Sweep
from tui_tuner.params import TrialParams
from tui_tuner.report import progress_table
from tui_tuner.state_words import state_word
from tui_tuner.ui.trials_table import trial_cells

# Eval loss by step: improves to 0.8 at 20; 0.79 at 40 is a new minimum but not by more than min_delta = 0.02;
# so with patience 3 the evals at 30, 40, 50 are the three without improvement: it stops at 50, told 0.79.
EVALS = {10: 1.0, 20: 0.8, 30: 0.85, 40: 0.79, 50: 0.9, 60: 0.95, 70: 0.96, 80: 0.97, 90: 0.98, 100: 0.99}
PARAMS = {"max_steps": 100, "eval_interval": 10, "early_stopping_patience": 3, "early_stopping_min_delta": 0.02}
REASON = "no eval improvement > 0.02 in 3 evals (best 0.7900 at step 40)"


@pytest.fixture(autouse=True)
def _scripted_evals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeTrainer, "evaluate", lambda self: EVALS.get(self.step_count, 1.0))


def test_counts_evals_since_the_last_improvement_by_more_than_min_delta() -> None:
    stop = EarlyStop(3, 0.02)
    assert [stop.observe(s, v) for s, v in sorted(EVALS.items())[:5]] == [False, False, False, False, True]
    assert (stop.best, stop.best_step, stop.stale) == (0.79, 40, 3)
    assert stop.reason() == REASON


def test_an_improvement_resets_the_count_and_no_patience_never_stops() -> None:
    stop = EarlyStop(2)
    assert not stop.observe(1, 1.0) and not stop.observe(2, 1.0) and not stop.observe(3, 0.5)
    assert stop.stale == 0 and stop.observe(4, 0.5) is False and stop.observe(5, 0.6) is True
    never = EarlyStop.replay(None, 0.0, [(s, 1.0) for s in range(100)])
    assert never.stale == 99 and not never.should_stop


def test_replay_counts_the_history_with_the_patience_given_now() -> None:
    history = [(float(s), v) for s, v in sorted(EVALS.items())[:4]]  # up to step 40: 2 evals without improvement
    assert not EarlyStop.replay(3, 0.02, history).should_stop
    assert EarlyStop.replay(2, 0.02, history).should_stop  # a fork that lowered patience stops at once


def test_params_refuse_bad_values_naming_the_field() -> None:
    with pytest.raises(ValueError, match="early_stopping_patience"):
        TrialParams(max_steps=10, early_stopping_patience=0)
    with pytest.raises(ValueError, match="early_stopping_min_delta"):
        TrialParams(max_steps=10, early_stopping_min_delta=-0.1)


def _assert_early_stopped(sweep: Sweep, n: int, at: int, reason: str = REASON, best: float = 0.79) -> None:
    t = sweep.trial(n)
    assert (t.state, t.step) == ("complete", at)
    frozen = sweep.study.trials[n]
    assert frozen.state == OptunaState.COMPLETE and frozen.value == best  # its best, not its last (0.9)
    assert frozen.user_attrs["early_stopped_at_step"] == at and frozen.user_attrs["early_stop_reason"] == reason
    assert max(c.step for c in t.checkpoints) == at  # the final checkpoint, written where it stopped
    done = [e for e in sweep.events_since(0) if e.kind == "complete" and e.trial == n][-1]
    assert "early stopped" in done.message and reason in done.message
    assert state_word(t.state, t.user_attrs) == "early stop"
    assert "early stop" in progress_table(sweep.snapshot())
    assert trial_cells(t)[1].plain == "early stop"  # the app's state column


def test_a_trial_ends_complete_at_the_eval_that_runs_out_of_patience(fake_sweep) -> None:
    sweep = fake_sweep(params=PARAMS, study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(60)
    _assert_early_stopped(sweep, 0, at=50)


def test_a_resumed_trial_counts_on_from_its_eval_history(fake_sweep) -> None:
    backend = FakeBackend(step_s=0.02)
    sweep = fake_sweep(params=PARAMS, study={"n_trials": 1, "concurrency": 1}, backend=backend).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].step >= 31, what="past the eval at step 30")
    sweep.stop()
    stopped_at = sweep.trial(0).step
    assert sweep.trial(0).state == "interrupted" and stopped_at < 40
    again = Sweep.open(sweep.run_dir, backend=FakeBackend()).start()
    try:
        assert again.wait(60)
        # Counted afresh from the resume point it would run to step 70 (40 first, then 50, 60, 70 stale).
        _assert_early_stopped(again, 0, at=50)
    finally:
        again.stop(timeout=60)


def test_a_fork_counts_only_its_own_evals_with_its_own_patience(fake_sweep) -> None:
    sweep = fake_sweep(params=PARAMS, study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(60)
    child = sweep.fork(0, step=20, params={"early_stopping_patience": 1})
    assert sweep.wait(60)
    # Its own evals: 30 (its first), 40 (0.79 < 0.85 - 0.02: better), 50 (worse): one without improvement.
    # Counted with its parent's curve it would have stopped at 30 (0.85 after the parent's 0.8).
    _assert_early_stopped(sweep, child, at=50, reason="no eval improvement > 0.02 in 1 evals "
                          "(best 0.7900 at step 40)")


def test_without_patience_the_trial_runs_its_budget(fake_sweep) -> None:
    sweep = fake_sweep(params={**PARAMS, "early_stopping_patience": None}, study={"n_trials": 1,
                                                                                 "concurrency": 1}).start()
    assert sweep.wait(60)
    t = sweep.trial(0)
    assert (t.state, t.step) == ("complete", 100) and "early_stopped_at_step" not in t.user_attrs
    assert sweep.study.trials[0].value == 0.99
