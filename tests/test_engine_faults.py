"""The engine under faults and edge cases: a broken sampler, failing checkpoints, NaN evals, a second process,
resume with freed slots, forks that would not fit, and commands after stop."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import tiny_preset_dict, wait_for
from tui_tuner import Preset, Sweep, SweepError
from tui_tuner.engine.run_lock import RunDirLockedError
from tui_tuner.engine.study import make_sampler, suggest_params
from tui_tuner.training import checkpoint as ckpt
from tui_tuner.training.finetune import FineTune

LONG = {"max_steps": 5000}


def _trials(sweep: Sweep) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=sweep.preset.study_name, storage=sweep.study._storage).trials


@pytest.mark.parametrize("sampler", ["tpe", "random", "grid", "gp", "cmaes"])
def test_every_sampler_proposes_past_its_random_startup(sampler):
    """GP and CMA-ES switch from random startup proposals to their own model after ~10 trials: ask past that
    (no training) so a missing optional dependency (scipy for GP) shows here, not hours into a sweep."""
    search = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": sampler != "grid",
                                "step": 1e-3 if sampler == "grid" else None},
              "warmup_steps": {"type": "int", "low": 0, "high": 20, "step": 5}}
    preset = Preset.from_dict(tiny_preset_dict(search=search, study={"sampler": sampler, "sampler_seed": 1}))
    study = optuna.create_study(sampler=make_sampler(preset), direction="minimize")
    for _ in range(14):
        trial = study.ask()
        params = suggest_params(trial, preset, {})
        study.tell(trial, params.learning_rate * 100 + params.warmup_steps / 20)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 14


class _BrokenAfterFirst(optuna.samplers.RandomSampler):
    """A sampler whose ask fails from the second trial on (as GP's did without scipy)."""

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        if trial.number >= 1:
            raise ModuleNotFoundError("No module named 'scipy'")
        return super().infer_relative_search_space(study, trial)


def test_a_sampler_that_fails_halts_the_sweep_without_leaving_a_trial_running(make_sweep, monkeypatch):
    monkeypatch.setattr("tui_tuner.engine.sweep.make_sampler", lambda *a, **k: _BrokenAfterFirst(seed=0))
    sweep = make_sweep(params={"max_steps": 10}, study={"n_trials": 4, "concurrency": 1}).start()
    assert sweep.wait(120), "a broken sampler must not hang wait()"
    assert sweep.halted == "ModuleNotFoundError: No module named 'scipy'"
    states = [t.state for t in _trials(sweep)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    assert "scipy" in _trials(sweep)[1].user_attrs["error"]
    assert any(e.kind == "sweep_halted" for e in sweep.events_since(0))
    assert sweep.snapshot().halted == sweep.halted
    from tui_tuner.ui.status_line import status_text

    assert "HALTED" in status_text(sweep.snapshot()).plain  # the app's header says so, not "finished"
    with pytest.raises(SweepError, match="cannot start trials"):
        sweep.enqueue({"learning_rate": 1e-3})
    import io

    from tui_tuner.headless import run_headless

    assert run_headless(sweep, out=io.StringIO()) == 1  # and headless exits non-zero (it stops the sweep)


def test_checkpoint_errors_of_any_type_keep_the_trial_and_the_previous_checkpoint(make_sweep, monkeypatch):
    real_save = ckpt.save

    def save_fails_after_step_10(ft, trial_dir, eval_loss):  # type: ignore[no-untyped-def]
        if ft.step_count > 10:  # what torch.save raises on a full disk: not an OSError
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
        return real_save(ft, trial_dir, eval_loss)

    monkeypatch.setattr(ckpt, "save", save_fails_after_step_10)
    sweep = make_sweep(params={"max_steps": 30}, study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(120)
    assert sweep.trial(0).state == "complete"  # a failed checkpoint is not a failed trial
    assert [c.step for c in ckpt.list_checkpoints(sweep.run_dir / "trials" / "0")] == [10]
    failed = [e for e in sweep.events_since(0) if e.kind == "checkpoint_failed"]
    assert failed and "RuntimeError: [enforce fail" in failed[0].message


def test_a_trial_whose_stop_handler_breaks_is_still_told_and_not_left_running(make_sweep, monkeypatch):
    from tui_tuner.engine.runner import TrialRunner

    def broken_stop(self):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TrialRunner, "_finish_stopped", broken_stop)
    sweep = make_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].step >= 2, what="trial 0 stepping")
    sweep.stop(timeout=60)
    t = _trials(sweep)[0]
    assert t.state == TrialState.FAIL and "No space left on device" in t.user_attrs["error"]
    assert sweep.trial(0).state == "fail"


def test_a_nan_eval_fails_the_trial_and_never_becomes_the_best(make_sweep, monkeypatch):
    monkeypatch.setattr(FineTune, "evaluate", lambda self: math.nan)
    sweep = make_sweep(params={"max_steps": 20}, study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(120)
    t = sweep.trial(0)
    assert t.state == "fail" and "eval loss is nan at step 10" in t.error
    assert _trials(sweep)[0].state == TrialState.FAIL
    assert sweep.snapshot().best_trial is None


def test_an_improving_eval_is_checkpointed_even_between_periodic_checkpoints(make_sweep):
    sweep = make_sweep(params={"max_steps": 30, "eval_interval": 10}, checkpoints={"interval": 25, "keep": 10},
                       study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(120)
    saved = {c.step: c.eval_loss for c in ckpt.list_checkpoints(sweep.run_dir / "trials" / "0")}
    assert 10 in saved and 25 in saved and 30 in saved  # step 10: the first eval is always a new best
    assert saved[10] == pytest.approx(min(v for s, v in saved.items() if s <= 10 and v is not None))


def test_a_live_run_dir_cannot_be_driven_by_a_second_sweep(make_sweep):
    sweep = make_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    with pytest.raises(RunDirLockedError, match=r"is in use by a running tui-tuner \(pid \d+\)"):
        Sweep.resume(sweep.run_dir).start()
    assert sweep.trials()[0].state in ("running", "paused")  # the second one touched nothing
    sweep.stop()
    again = Sweep.resume(sweep.run_dir)
    try:
        again.start()  # the lock went with the stop
    finally:
        again.stop()


def test_with_paused_frees_slot_a_resume_waits_for_a_free_slot(make_sweep):
    sweep = make_sweep(params=LONG, study={"n_trials": 2, "concurrency": 1, "paused_frees_slot": True}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step >= 2, what="trial 0 stepping")
    sweep.pause(0)
    wait_for(lambda: len(sweep.trials()) == 2 and sweep.trial(1).state == "running", what="trial 1 takes the slot")
    sweep.resume(0)
    held = sweep.trial(0).step
    wait_for(lambda: sweep.trial(1).step >= 5, what="trial 1 stepping")
    assert sweep.trial(0).state == "paused" and sweep.trial(0).step == held  # concurrency 1 is kept
    assert any(e.kind == "resume_queued" and e.trial == 0 for e in sweep.events_since(0))
    sweep.kill(1)
    wait_for(lambda: sweep.trial(0).state == "running" and sweep.trial(0).step > held, what="queued resume")


def test_a_full_fine_tune_fork_refuses_a_different_freeze_layers(make_sweep):
    sweep = make_sweep(model={"method": "full"}, params={**LONG, "freeze_layers": 1},
                       study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step >= 1, what="trial 0 stepping")
    with pytest.raises(SweepError, match="cannot change freeze_layers"):
        sweep.fork(0, params={"freeze_layers": 0})


def test_commands_after_stop_are_refused_not_lost(make_sweep):
    sweep = make_sweep(params={"max_steps": 5}, study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(60)
    sweep.stop()
    with pytest.raises(SweepError, match="stopped"):
        sweep.enqueue({"learning_rate": 1e-3})
    with pytest.raises(SweepError, match="stopped"):
        sweep.fork(0, params={"max_steps": 10})
    assert sweep.wait(1)


def test_snapshots_carry_the_optuna_user_attrs(make_sweep):
    sweep = make_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step >= 2, what="trial 0 stepping")
    assert sweep.trial(0).user_attrs["origin"] == "sampler"
    sweep.kill(0)
    wait_for(lambda: sweep.trial(0).state == "pruned", what="kill")
    attrs = sweep.trial(0).user_attrs
    assert attrs == {**_trials(sweep)[0].user_attrs}
    assert attrs["stopped_by_user"] is True
