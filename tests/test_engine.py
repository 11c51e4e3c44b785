"""The sweep engine against real tiny fine-tunes: control commands, concurrency, failures, the journal."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import wait_for
from tui_tuner import Sweep, SweepError

LONG = {"max_steps": 5000}


def _study(sweep) -> optuna.Study:
    return optuna.load_study(study_name=sweep.preset.study_name, storage=sweep.study._storage)


def test_pause_stops_the_step_counter_and_resume_continues(make_sweep):
    sweep = make_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].step >= 3, what="trial 0 stepping")
    sweep.pause(0)
    wait_for(lambda: sweep.trial(0).state == "paused", what="pause acknowledged")
    held = sweep.trial(0).step
    time.sleep(0.6)
    assert sweep.trial(0).step == held
    sweep.resume_trial(0)
    wait_for(lambda: sweep.trial(0).step > held + 3, what="steps after resume")
    assert sweep.trial(0).state == "running"


def test_kill_is_pruned_with_user_attrs_and_visible_to_the_sampler(make_sweep):
    # No periodic eval: the kill itself must leave the intermediate value TPE needs, at the kill step.
    sweep = make_sweep(params={**LONG, "eval_interval": 100_000}, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].step >= 3, what="trial 0 stepping")
    sweep.kill(0)
    wait_for(lambda: sweep.trial(0).state == "killed", what="kill")
    t = _study(sweep).trials[0]
    assert t.state == TrialState.PRUNED
    assert t.user_attrs["stopped_by_user"] is True
    assert t.user_attrs["stopped_at_step"] == sweep.trial(0).step
    # TPE ranks pruned trials by their last intermediate value: the kill must leave one.
    assert t.intermediate_values and t.last_step == sweep.trial(0).step
    pairs = [x for x in _study(sweep).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))]
    assert [x.number for x in pairs] == [0]
    with pytest.raises(SweepError, match="not running"):
        sweep.pause(0)


def test_enqueue_runs_the_given_params_next(make_sweep):
    sweep = make_sweep(params=LONG, study={"n_trials": 3, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].step >= 1, what="trial 0")
    n = sweep.enqueue({"learning_rate": 0.00123, "max_steps": 12})
    assert n == 1
    sweep.kill(0)
    wait_for(lambda: sweep.trial(1).state == "complete" if 1 in {t.number for t in sweep.trials()
                                                               if t.state != "waiting"} else False,
             what="enqueued trial to finish")
    t = _study(sweep).trials[1]
    assert sweep.trial(1).params == t.params
    assert t.params["learning_rate"] == pytest.approx(0.00123)
    assert t.user_attrs["origin"] == "enqueue"
    assert sweep.trial(1).step == 12  # the fixed-param override took effect too


def test_concurrency_is_never_exceeded_and_can_be_raised(make_sweep):
    sweep = make_sweep(params={"max_steps": 25}, study={"n_trials": 5, "concurrency": 1})
    running: set[int] = set()
    peak = [0]
    lock = threading.Lock()

    def on_event(ev):
        with lock:
            if ev.kind == "started":
                running.add(ev.trial)
            elif ev.kind in ("complete", "pruned", "failed", "killed", "interrupted"):
                running.discard(ev.trial)
            peak[0] = max(peak[0], len(running))

    sweep.start()
    sweep.subscribe(on_event)
    wait_for(lambda: len(sweep.trials()) >= 2, what="two trials")
    assert peak[0] <= 1
    sweep.set_concurrency(2)
    assert sweep.wait(120)
    assert peak[0] <= 2
    assert [t.state for t in sweep.trials()] == ["complete"] * 5


def test_a_trial_that_raises_is_fail_and_the_others_finish(make_sweep):
    sweep = make_sweep(study={"n_trials": 2, "concurrency": 2}).start()
    bad = sweep.enqueue({"lora_target_modules": "no_such_module"})
    assert sweep.wait(120)
    study = _study(sweep)
    assert study.trials[bad].state == TrialState.FAIL
    assert "no_such_module" in study.trials[bad].user_attrs["error"]
    assert sorted(t.state for t in study.trials if t.number != bad) == [TrialState.COMPLETE] * 2
    assert (sweep.run_dir / "trials" / str(bad) / "error.log").is_file()


def test_stop_interrupts_every_trial_without_telling_optuna_and_journal_reloads(make_sweep, tmp_path):
    sweep = make_sweep(params=LONG, study={"n_trials": 2, "concurrency": 2}).start()
    wait_for(lambda: len(sweep.trials()) == 2 and all(t.step > 2 for t in sweep.trials()), what="2 running")
    sweep.pause(1)
    sweep.stop()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep.run_dir / "optuna.journal")))
    study = optuna.load_study(study_name="test", storage=storage)
    assert len(study.trials) == 2
    # Never told: a stop says nothing about the params, so the sampler must not learn from it. Every RUNNING
    # trial is accounted for by its interrupted_at_step; the paused one is marked to come back paused.
    assert all(t.state == TrialState.RUNNING for t in study.trials)
    assert all(t.user_attrs["interrupted_at_step"] > 0 for t in study.trials)
    assert [t.user_attrs["paused"] for t in study.trials] == [False, True]
    assert [t.state for t in sweep.trials()] == ["interrupted", "interrupted"]


def test_run_dir_files(make_sweep):
    sweep = make_sweep(study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(120)
    elapsed = sweep.snapshot().elapsed
    time.sleep(0.3)
    assert sweep.snapshot().elapsed == elapsed  # the clock stops when the sweep finishes
    sweep.stop()
    run = sweep.run_dir
    assert (run / "preset.toml").is_file() and (run / "optuna.journal").is_file()
    rows = [json.loads(x) for x in (run / "trials/0/metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 41))
    assert set(steps[0]) == {"step", "loss", "lr", "grad_norm", "tokens_per_s", "step_time", "mem_bytes", "time"}
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    t = sweep.trial(0)
    assert t.device == "cpu" and 0 < t.own_mem_bytes < t.peak_mem_bytes  # its own bytes, not the process's RSS
    kinds = [json.loads(x)["event"] for x in (run / "events.jsonl").read_text().splitlines()]
    assert "started" in kinds and "complete" in kinds and kinds[-1] == "sweep_stopped"


@pytest.mark.parametrize("prune_user_trials", [True, False])
def test_pruner_prunes_a_bad_trial_unless_the_user_asked_for_it(make_sweep, prune_user_trials):
    sweep = make_sweep(params={"max_steps": 60, "eval_interval": 10, "learning_rate": 1e-2},
                       search={"weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
                       study={"n_trials": 1, "concurrency": 1, "pruner": "median", "pruner_startup_trials": 1,
                              "prune_user_trials": prune_user_trials})
    sweep.start()
    assert sweep.wait(120)
    bad = sweep.enqueue({"learning_rate": 1e-6})
    assert not sweep.finished  # an enqueue reopens a finished sweep at once: wait() waits for it
    assert sweep.wait(120)
    assert sweep.trial(0).state == "complete"
    if prune_user_trials:
        assert sweep.trial(bad).state == "pruned" and sweep.trial(bad).step == 10
        assert not sweep.trial(bad).stopped_by_user
    else:
        assert sweep.trial(bad).state == "complete" and sweep.trial(bad).step == 60


def test_enqueue_rejects_bad_params_in_one_line(make_sweep):
    sweep = make_sweep(search={"lora_alpha": {"type": "categorical", "choices": [8, 16]}}).start()
    with pytest.raises(SweepError, match="lora_alpha"):
        sweep.enqueue({"lora_alpha": 3})
    with pytest.raises(SweepError, match="learning_rate"):
        sweep.enqueue({"learning_rate": -1})
    with pytest.raises(SweepError, match="unknown"):
        sweep.enqueue({"learning_rat": 1e-3})


def test_engine_and_training_never_import_textual():
    root = Path(__file__).parent.parent / "tui_tuner"
    for pkg in ("engine", "training"):
        for f in (root / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n.split(".")[0] in ("textual", "tui_tuner") and ("ui" in n.split(".")[1:2]
                               or n.startswith("textual")) for n in names), f"{f} imports {names}"
    code = "import sys, tui_tuner, tui_tuner.engine.sweep, tui_tuner.headless; assert 'textual' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reloaded_history_takes_the_later_lines_after_a_resume(tmp_path):
    from tui_tuner.engine.resume import _load_history
    from tui_tuner.engine.trial import TrialRun
    from tui_tuner.params import TrialParams

    lines = [{"step": s, "loss": 10.0 - s} for s in (1, 2, 3, 4)] + [{"step": 4, "eval_loss": 5.0}]
    lines += [{"step": s, "loss": 100.0 + s} for s in (3, 4, 5)]  # resumed from a step-2 checkpoint
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    run = TrialRun(number=0, trial=None, params=TrialParams(max_steps=5), searched={}, overrides={},
                   trial_dir=tmp_path)
    _load_history(run, {}, None)
    assert run.history.series["loss"].points() == [(1, 9.0), (2, 8.0), (3, 103.0), (4, 104.0), (5, 105.0)]
    assert run.history.series["eval_loss"].points() == [] and run.step == 5


def test_enqueue_samples_the_searched_params_it_does_not_name_and_queued_trials_are_visible(make_sweep):
    sweep = make_sweep(params=LONG, search={"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                                            "weight_decay": {"type": "float", "low": 0.01, "high": 0.1}},
                       study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].step >= 1, what="trial 0")
    n = sweep.enqueue({"learning_rate": 0.002})
    queued = sweep.trial(n)
    assert queued.state == "waiting" and queued.params == {"learning_rate": 0.002}
    sweep.kill(0)
    wait_for(lambda: sweep.trial(n).state == "running", what="enqueued trial starts")
    params = sweep.trial(n).params
    assert params["learning_rate"] == 0.002 and 0.01 <= params["weight_decay"] <= 0.1


def test_reads_do_not_wait_on_a_slow_ask_and_a_starting_trial_is_always_visible(make_sweep):
    """A GP sampler's ask can take a second: the UI's reads must not wait on it, and a queued trial being
    started must be either waiting or running, never missing (CI once saw "no trial 1")."""
    sweep = make_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].step >= 1, what="trial 0")
    asking, release = threading.Event(), threading.Event()
    real_pop = sweep.gateway._pop_own_waiting  # inside the ask, under the gateway's lock

    def slow_pop():
        trial_id = real_pop()
        asking.set()
        release.wait(30)  # the ask "takes" until the reads below are done
        return trial_id

    sweep.gateway._pop_own_waiting = slow_pop
    n = sweep.enqueue({"learning_rate": 0.002})
    sweep.kill(0)
    assert asking.wait(30), "the scheduler never asked"
    states: list[str] = []
    reader = threading.Thread(target=lambda: states.extend(
        [sweep.trial(n).state, *(s.state for s in sweep.trials() if s.number == n)]))
    reader.start()
    reader.join(10)
    release.set()
    assert not reader.is_alive(), "reads waited on the sampler's ask"
    assert states == ["waiting", "waiting"]
    wait_for(lambda: sweep.trial(n).state == "running", what="enqueued trial starts")


def test_a_failing_event_listener_does_not_hurt_the_trial(make_sweep):
    sweep = make_sweep(study={"n_trials": 1, "concurrency": 1}).start()

    def broken(_ev):
        raise BrokenPipeError

    sweep.subscribe(broken)
    assert sweep.wait(120)
    assert sweep.trial(0).state == "complete"


def test_resume_does_not_replay_the_samplers_proposals(make_sweep, tmp_path):
    sweep = make_sweep(params={"max_steps": 5}, study={"n_trials": 2, "concurrency": 1, "sampler": "random"}).start()
    assert sweep.wait(60)
    sweep.stop()
    again = Sweep.open(sweep.run_dir, n_trials=4).start()
    try:
        assert again.wait(60)
        lrs = [t.params["learning_rate"] for t in again.trials()]
        assert len(lrs) == 4 and len(set(lrs)) == 4
    finally:
        again.stop()


def test_bad_storage_url_is_one_line_and_writes_nothing(tmp_path):
    from tests.conftest import tiny_preset_dict
    from tui_tuner import Preset

    with pytest.raises(SweepError, match=r"^--storage bogus://x: "):
        Sweep(Preset.from_dict(tiny_preset_dict()), tmp_path / "run", storage="bogus://x").start()
    assert not (tmp_path / "run").exists()


def test_an_oom_trial_is_retried_with_half_the_micro_batch_from_its_checkpoint(make_sweep, monkeypatch):
    import torch

    from tui_tuner.training.finetune import FineTune

    real_step = FineTune.step

    def step_that_ooms_on_big_batches(self):
        if self.batch_size > 4 and self.step_count >= 12:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self)

    monkeypatch.setattr(FineTune, "step", step_that_ooms_on_big_batches)
    sweep = make_sweep(params={"max_steps": 30, "batch_size": 8}, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: len(sweep.trials()) == 2 and sweep.trial(1).state == "complete", what="retry", timeout=120)
    failed, retry = sweep.trial(0), sweep.trial(1)
    assert failed.state == "failed" and failed.error.startswith("out of memory at step 12 (batch_size=8")
    assert retry.parent == 0 and retry.fork_step == 10 and retry.step == 30
    assert retry.overrides == {"batch_size": 4, "grad_accum": 2}
