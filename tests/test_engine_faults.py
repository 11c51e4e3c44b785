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


@pytest.mark.parametrize(("n_trials", "startup", "expected"), [(8, None, 2), (16, None, 4), (80, None, 10),
                                                                  (8, 5, 5)])
def test_the_samplers_model_guides_after_its_startup_trials(n_trials, startup, expected):
    """TPE samples from its own RandomSampler(seed) until `expected` trials are finished, then from its model: a
    budget of 8 is not all random (Optuna's default startup is 10)."""
    search = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    study_sec = {"sampler": "tpe", "sampler_seed": 3, "n_trials": n_trials, "sampler_startup_trials": startup}
    preset = Preset.from_dict(tiny_preset_dict(search=search, study=study_sec))
    tpe = optuna.create_study(sampler=make_sampler(preset), direction="minimize")
    rnd = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3), direction="minimize")
    same = []
    for _ in range(expected + 1):
        a, b = (s.ask().suggest_float("learning_rate", 1e-4, 1e-1, log=True) for s in (tpe, rnd))
        same.append(a == b)
        for s, x in ((tpe, a), (rnd, b)):
            s.tell(s.trials[-1].number, abs(math.log10(x) + 2))
    assert same == [True] * expected + [False]


@pytest.mark.parametrize("sampler", ["gp", "cmaes"])
def test_samplers_that_read_only_complete_trials_learn_from_pruned_ones(sampler, tmp_path):
    """GP ignores PRUNED trials (CMA-ES too, unless told otherwise): a region the pruner always stops looked
    unexplored to them, so they proposed it again and again (a measured GP + median sweep spent 11 of its last 14
    trials at the lower corner of the space). The engine's sampler shows them pruned trials at their last eval."""
    from tui_tuner.engine.study_gateway import StudyGateway

    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
             "weight_decay": {"type": "float", "low": 0.0, "high": 0.1}}
    preset = Preset.from_dict(tiny_preset_dict(search=space, study={
        "sampler": sampler, "sampler_seed": 0, "sampler_startup_trials": 4, "n_trials": 20, "pruner": "median"}))
    gateway = StudyGateway(preset, tmp_path / "optuna.journal", None)
    gateway.open(max_resource=100)
    study, in_pruned_region = gateway.study, 0
    for i in range(20):
        t = study.ask()
        lr, wd = (t.suggest_float(k, d["low"], d["high"], log=d.get("log", False)) for k, d in space.items())
        if lr < 2e-3:  # always pruned at its first eval, and the smaller the learning rate the worse
            t.report(8 - math.log10(lr), 10)
            study.tell(t, state=TrialState.PRUNED)
            in_pruned_region += i >= 4
        else:
            study.tell(t, (math.log10(lr) + 1.9) ** 2 + wd)
    assert in_pruned_region <= 4, f"{in_pruned_region} of 16 model-guided trials went back to the pruned region"


def test_startup_trials_on_a_sampler_without_a_model_is_an_error():
    with pytest.raises(ValueError, match="sampler_startup_trials: the random sampler has no model"):
        Preset.from_dict(tiny_preset_dict(study={"sampler": "random", "sampler_startup_trials": 3}))


class _BrokenOnSecondAsk(optuna.samplers.RandomSampler):
    """A sampler whose ask fails from its second trial on, after Optuna has created the trial (as GP's did in
    its first model-based proposal without scipy)."""

    asks = 0

    def before_trial(self, study, trial):  # type: ignore[no-untyped-def]
        self.asks += 1
        if self.asks >= 2:
            raise ModuleNotFoundError("No module named 'scipy'")
        super().before_trial(study, trial)


def test_a_sampler_that_fails_halts_the_sweep_and_fails_only_the_trial_it_was_creating(make_sweep, monkeypatch):
    monkeypatch.setattr("tui_tuner.engine.study_gateway.make_sampler", lambda *a, **k: _BrokenOnSecondAsk(seed=0))
    sweep = make_sweep(params={"max_steps": 10}, study={"n_trials": 4, "concurrency": 1}).start()
    # Another process on the same storage has a trial RUNNING: the halt must not touch it.
    foreign = optuna.load_study(study_name=sweep.preset.study_name, storage=sweep.study._storage).ask()
    assert sweep.wait(120), "a broken sampler must not hang wait()"
    assert sweep.halted == "ModuleNotFoundError: No module named 'scipy'"
    by_number = {t.number: t for t in _trials(sweep)}
    ours = sorted(set(by_number) - {foreign.number})
    assert [by_number[n].state for n in ours] == [TrialState.COMPLETE, TrialState.FAIL]
    assert "scipy" in by_number[ours[1]].user_attrs["error"]
    assert by_number[foreign.number].state == TrialState.RUNNING
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

    def save_fails_after_step_10(ft, trial_dir, eval_loss, kind):  # type: ignore[no-untyped-def]
        if ft.step_count > 10:  # what torch.save raises on a full disk: not an OSError
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
        return real_save(ft, trial_dir, eval_loss, kind)

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

    monkeypatch.setattr(TrialRunner, "_finish_interrupted", broken_stop)
    sweep = make_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].step >= 2, what="trial 0 stepping")
    sweep.stop(timeout=60)
    t = _trials(sweep)[0]
    assert t.state == TrialState.FAIL and "No space left on device" in t.user_attrs["error"]
    assert sweep.trial(0).state == "failed"
    assert "OSError: [Errno 28]" in (sweep.run_dir / "trials" / "0" / "error.log").read_text()


def test_a_nan_eval_fails_the_trial_and_never_becomes_the_best(make_sweep, monkeypatch):
    monkeypatch.setattr(FineTune, "evaluate", lambda self: math.nan)
    sweep = make_sweep(params={"max_steps": 20}, study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(120)
    t = sweep.trial(0)
    assert t.state == "failed" and "eval loss is nan at step 10" in t.error
    assert _trials(sweep)[0].state == TrialState.FAIL
    assert sweep.snapshot().best_trial is None


def test_an_improving_eval_is_checkpointed_and_kept_only_while_it_is_the_best(make_sweep, monkeypatch):
    evals = iter([5.0, 6.0, 4.0, 4.5])  # steps 10, 20, 30, 40: new best at 10 and 30 only
    monkeypatch.setattr(FineTune, "evaluate", lambda self: next(evals))
    sweep = make_sweep(params={"max_steps": 40, "eval_interval": 10}, checkpoints={"interval": 25, "keep": 2},
                       study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(120)
    saved = {c.step: (c.kind, c.eval_loss) for c in ckpt.list_checkpoints(sweep.run_dir / "trials" / "0")}
    # 10 was written as the best, then replaced by 30; 20 never improved; the periodic 25 and the final 40 are
    # the last `keep` = 2, which "best" checkpoints do not crowd out.
    assert saved == {25: ("periodic", None), 30: ("best", 4.0), 40: ("final", 4.5)}
    written = [e.data["step"] for e in sweep.events_since(0) if e.kind == "checkpoint"]
    assert written == [10, 25, 30, 40]


def test_a_live_run_dir_cannot_be_driven_by_a_second_sweep(make_sweep):
    sweep = make_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    with pytest.raises(RunDirLockedError, match=r"is in use by a running tui-tuner \(pid \d+\)"):
        Sweep.open(sweep.run_dir).start()
    # The second one touched nothing (trial 0 may not be asked yet when the refusal comes: wait for it to exist)
    wait_for(lambda: any(t.number == 0 and t.state == "running" for t in sweep.trials()), what="trial 0 running")
    sweep.stop()
    broken = Sweep.open(sweep.run_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(optuna, "create_study", lambda **kw: (_ for _ in ()).throw(OSError(5, "Input/output error")))
        with pytest.raises(OSError):
            broken.start()  # fails after taking the lock: must give it back
    again = Sweep.open(sweep.run_dir)
    try:
        again.start()  # the lock went with the stop, and with the failed start
    finally:
        again.stop()


def test_with_paused_frees_slot_a_resume_waits_for_a_free_slot(make_sweep):
    sweep = make_sweep(params=LONG, study={"n_trials": 2, "concurrency": 1, "paused_frees_slot": True}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step >= 2, what="trial 0 stepping")
    sweep.pause(0)
    sweep.resume_trial(0)  # changed its mind before the trial got to pause: nothing to queue
    assert not any(e.kind == "resume_queued" for e in sweep.events_since(0))
    sweep.pause(0)
    wait_for(lambda: len(sweep.trials()) == 2 and sweep.trial(1).state == "running", what="trial 1 takes the slot")
    sweep.resume_trial(0)
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
    queued = sweep.enqueue({"learning_rate": 1e-3})
    assert sweep.trial(queued).state == "waiting" and sweep.trial(queued).user_attrs["origin"] == "enqueue"
    sweep.kill(0)
    wait_for(lambda: sweep.trial(0).state == "killed", what="kill")
    attrs = sweep.trial(0).user_attrs
    assert attrs == {**_trials(sweep)[0].user_attrs}
    assert attrs["stopped_by_user"] is True
