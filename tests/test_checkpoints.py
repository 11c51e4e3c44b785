"""Checkpoints, exact resume, fork with overrides and lineage, WSD re-decay, crash + resume of a sweep."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from tests.conftest import tiny_preset_dict, wait_for
from tui_tuner import Sweep, SweepError
from tui_tuner.params import TrialParams
from tui_tuner.preset import DataSection, dump_toml
from tui_tuner.training import checkpoint as ckpt
from tui_tuner.training.finetune import FineTune, prepare_data
from tui_tuner.training.schedules import lr_factor


@pytest.fixture(scope="module")
def demo_data():
    torch.set_num_threads(1)
    return prepare_data("builtin:tiny-llama", DataSection(train="builtin:progressions", max_length=40))[1]


def _ft(data, **kw) -> FineTune:
    p = dict(max_steps=30, batch_size=8, eval_batches=2, learning_rate=3e-3, warmup_steps=5, lora_r=4,
             lora_dropout=0.0, schedule="cosine")
    return FineTune("builtin:tiny-llama", "lora", TrialParams(**{**p, **kw}), data)


def _assert_resume_is_exact(data, tmp_path: Path, before: int, after: int, **kw) -> FineTune:
    """`before` steps, a checkpoint, a restore into a fresh FineTune and `after` more steps give the losses of
    `before + after` steps straight; returns the resumed FineTune."""
    straight = _ft(data, **kw)
    losses = [straight.step().loss for _ in range(before + after)]

    first = _ft(data, **kw)
    for _ in range(before):
        first.step()
    info = ckpt.save(first, tmp_path)
    resumed = _ft(data, **kw)
    ckpt.restore(resumed, info.path)
    assert resumed.step_count == before
    tail = [resumed.step().loss for _ in range(after)]
    assert tail == pytest.approx(losses[before:], rel=1e-5, abs=1e-6)
    return resumed


def test_exact_resume_reproduces_the_uninterrupted_curve(demo_data, tmp_path):
    _assert_resume_is_exact(demo_data, tmp_path, 10, 10)


@pytest.mark.parametrize(("optimizer", "extra"), [
    ("adam", {}), ("sgd", {"momentum": 0.9, "nesterov": True}), ("rmsprop", {"momentum": 0.5}), ("adafactor", {}),
])
def test_exact_resume_with_each_optimizer(demo_data, tmp_path, optimizer, extra):
    resumed = _assert_resume_is_exact(demo_data, tmp_path, 4, 3, optimizer=optimizer, weight_decay=0.01, **extra)
    assert ckpt.saved_optimizer(ckpt.load_state(ckpt.list_checkpoints(tmp_path)[-1].path)) == optimizer
    assert resumed.optimizer.state  # the state came back (and is what made the tail match)


def test_a_restore_into_another_optimizer_is_refused_in_one_line(demo_data, tmp_path):
    sgd = _ft(demo_data, optimizer="sgd", momentum=0.9)
    sgd.step()
    info = ckpt.save(sgd, tmp_path)
    adamw = _ft(demo_data)
    with pytest.raises(ValueError, match=r"holds sgd optimizer state; the trial's optimizer is adamw "
                                         r"\(params.optimizer\)") as e:
        ckpt.restore(adamw, info.path)
    assert "\n" not in str(e.value)
    assert adamw.step_count == 0 and not adamw.optimizer.state  # nothing of the checkpoint was loaded


def _lora_weights(ft: FineTune) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in ft.model.named_parameters() if "lora_" in n}


def test_a_restore_never_reseeds_a_model_being_built_in_another_thread(demo_data, tmp_path, monkeypatch):
    """Two trials at once: one builds its model (LoRA init from torch's global RNG, seeded with its seed) while
    the other restores a checkpoint, whose RNG state goes into that same process-wide generator. The build is
    held mid-way, the restore runs against it: the built model must still be the one its seed gives."""
    import peft

    reference = _lora_weights(_ft(demo_data))
    other = _ft(demo_data, seed=7)
    other.step()
    torch.manual_seed(12345)  # the state the checkpoint carries is not the build's
    info = ckpt.save(other, tmp_path)
    target = _ft(demo_data, seed=7)
    inside, go_on = threading.Event(), threading.Event()
    real = peft.get_peft_model

    def held(*a, **k):  # type: ignore[no-untyped-def]
        inside.set()
        go_on.wait(10)  # between the build's seeding and the LoRA init
        return real(*a, **k)

    monkeypatch.setattr(peft, "get_peft_model", held)
    built: list[FineTune] = []
    builder = threading.Thread(target=lambda: built.append(_ft(demo_data)))
    builder.start()
    assert inside.wait(60)
    restorer = threading.Thread(target=ckpt.restore, args=(target, info.path))
    restorer.start()
    restorer.join(0.5)  # it waits for the build (with the lock), or it has reseeded the generator (without)
    go_on.set()
    builder.join(60)
    restorer.join(60)
    assert target.step_count == 1
    got = _lora_weights(built[0])
    assert all(torch.equal(got[k], reference[k]) for k in reference), "the build drew from the restored RNG"


def test_checkpoint_is_a_standard_peft_adapter(demo_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tui_tuner.training.model import builtin_model_dir

    ft = _ft(demo_data)
    for _ in range(3):
        ft.step()
    info = ckpt.save(ft, tmp_path, eval_loss=1.5)
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.pt"} <= {
        p.name for p in info.path.iterdir()}
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir()), info.path)
    ids = torch.tensor([[50, 51, 52, 53]])
    model.eval()
    ft.model.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, ft.model(input_ids=ids).logits, atol=1e-5)
    assert not list(tmp_path.glob("checkpoints/.tmp-*"))


def test_failed_checkpoint_write_keeps_the_previous_one(demo_data, tmp_path, monkeypatch):
    ft = _ft(demo_data)
    ft.step()
    good = ckpt.save(ft, tmp_path)
    ft.step()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save(ft, tmp_path)
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [good.step]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_keep_last_k_plus_best(demo_data, tmp_path):
    ft = _ft(demo_data)
    for loss in (3.0, 1.0, 2.0, 2.5, 2.6):
        ft.step()
        ckpt.save(ft, tmp_path, eval_loss=loss)
        ckpt.prune_checkpoints(tmp_path, keep=2, keep_best=True)
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [2, 4, 5]


def test_wsd_fork_from_stable_phase_redecays_at_the_new_end():
    parent = TrialParams(max_steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.2, learning_rate=1e-3)
    child = parent.model_copy(update={"max_steps": 200})
    # Forked at step 50 (stable phase): stays at the peak until the new decay start (200 - 38 = 162).
    lrs = {s: child.learning_rate * lr_factor(s, child, 200) for s in (50, 79, 80, 100, 161, 162, 199)}
    assert lrs[50] == lrs[79] == lrs[80] == lrs[100] == lrs[161] == pytest.approx(1e-3)
    assert lrs[162] < 1e-3 and lrs[199] == pytest.approx(0.0, abs=1e-9)
    assert parent.learning_rate * lr_factor(90, parent, 100) < 1e-3  # the parent was decaying there


def test_wsd_fork_through_a_checkpoint_uses_the_new_end(demo_data, tmp_path):
    wsd = dict(schedule="wsd", decay_fraction=0.2, warmup_steps=4, learning_rate=1e-3, max_steps=40)
    parent = _ft(demo_data, **wsd)
    for _ in range(20):
        parent.step()
    info = ckpt.save(parent, tmp_path)
    child = _ft(demo_data, **{**wsd, "max_steps": 80})
    ckpt.restore(child, info.path)
    lrs = [child.step().lr for _ in range(60)]  # steps 20..79 of the new 80-step plan
    decay_start = 4 + (80 - 4) - round((80 - 4) * 0.2)  # 65
    assert lrs[: decay_start - 20] == [pytest.approx(1e-3)] * (decay_start - 20)
    assert lrs[decay_start - 20] < 1e-3 and lrs[-1] < 1e-4
    assert all(a >= b for a, b in itertools.pairwise(lrs))


def _running(sweep, n, min_step=1):
    return lambda: any(t.number == n and t.state == "running" and t.step >= min_step for t in sweep.trials())


def test_fork_continues_from_the_parent_with_overrides_and_lineage(make_sweep):
    sweep = make_sweep(params={"max_steps": 5000, "learning_rate": 1e-2, "schedule": "constant",
                               "warmup_steps": 0},
                       search={"weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
                       study={"n_trials": 1, "concurrency": 2}, checkpoints={"interval": 40}).start()
    wait_for(_running(sweep, 0, 85), what="parent past step 80", timeout=120)
    child = sweep.fork(0, step=80, params={"learning_rate": 5e-4, "max_steps": 120, "weight_decay": 0.05})
    wait_for(lambda: sweep.trial(child).state == "complete" if child in {t.number for t in sweep.trials()
                                                                          if t.state != "waiting"} else False,
             what="child to finish", timeout=120)
    snap = sweep.trial(child)
    assert snap.parent == 0 and snap.fork_step == 80 and snap.step == 120
    # History: the parent's curve up to step 80, then the child's own.
    loss = sweep.series(child, "loss", max_points=None)
    assert loss[0][0] == 1 and loss[-1][0] == 120
    parent_loss = dict(sweep.series(0, "loss", max_points=None))
    assert dict(loss)[80] == parent_loss[80]
    # It starts from the parent's weights: its first loss is near the parent's, far below an untrained model's.
    first_own = dict(loss)[81]
    untrained = dict(sweep.series(0, "loss", max_points=None))[1]
    assert first_own < untrained - 1.0 and abs(first_own - parent_loss[80]) < 0.5
    # The override is live after the fork: LR 5e-4 (constant schedule), not the parent's 1e-2.
    lr = dict(sweep.series(child, "lr", max_points=None))
    assert lr[80] == pytest.approx(1e-2) and lr[81] == pytest.approx(5e-4) and lr[120] == pytest.approx(5e-4)
    t = optuna.load_study(study_name="test", storage=sweep.study._storage).trials[child]
    assert t.user_attrs["parent_trial"] == 0 and t.user_attrs["fork_step"] == 80
    assert t.user_attrs["fork_checkpoint"].endswith("trials/0/checkpoints/step-80")
    assert t.params == {"weight_decay": 0.05}
    assert t.user_attrs["overrides"] == {"learning_rate": 5e-4, "max_steps": 120}


def test_fork_without_step_checkpoints_a_running_trial_now_and_fork_of_paused(make_sweep):
    sweep = make_sweep(params={"max_steps": 5000}, study={"n_trials": 1, "concurrency": 3},
                       checkpoints={"interval": 1000}).start()
    wait_for(_running(sweep, 0, 5), what="parent running")
    sweep.pause(0)
    wait_for(lambda: sweep.trial(0).state == "paused", what="paused")
    at = sweep.trial(0).step
    child = sweep.fork(0)
    assert (sweep.run_dir / f"trials/0/checkpoints/step-{at}").is_dir()
    wait_for(lambda: any(t.number == child and t.step > at for t in sweep.trials()), what="child steps")
    assert sweep.trial(child).fork_step == at
    assert sweep.trial(0).state == "paused" and sweep.trial(0).step == at


def test_fork_of_a_completed_trial_extends_it_and_refuses_a_fork_with_nothing_left_to_do(make_sweep):
    sweep = make_sweep(params={"max_steps": 20}, study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(120)
    assert sweep.trial(0).state == "complete"
    with pytest.raises(SweepError, match=r"step 20 is already at the trial's end \(step 20\): raise max_steps"):
        sweep.fork(0)
    child = sweep.fork(0, params={"max_steps": 30})
    wait_for(lambda: sweep.trial(child).state == "complete", what="extended child", timeout=120)
    snap = sweep.trial(child)
    assert snap.fork_step == 20 and snap.step == 30 and snap.eval_loss is not None
    loss = dict(sweep.series(child, "loss", max_points=None))
    assert abs(loss[21] - loss[20]) < 0.5 < loss[1] - loss[21]


def test_fork_errors_are_one_line(make_sweep):
    sweep = make_sweep(params={"max_steps": 5000}, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(_running(sweep, 0, 12), what="parent running")
    with pytest.raises(SweepError, match="no trial 7"):
        sweep.fork(7)
    with pytest.raises(SweepError, match="lora_r"):
        sweep.fork(0, params={"lora_r": 16})
    with pytest.raises(SweepError, match=r"no checkpoint at step 3 \(available: 10"):
        sweep.fork(0, step=3)
    with pytest.raises(SweepError, match="unknown"):
        sweep.fork(0, params={"lr": 1.0})


def test_resume_of_a_non_run_dir_is_one_line(tmp_path):
    with pytest.raises(SweepError, match="not a tui-tuner run directory"):
        Sweep.open(tmp_path)


def test_sigkill_mid_sweep_then_resume_continues_from_checkpoints(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict(
        params={"max_steps": 160, "eval_interval": 20}, study={"n_trials": 3, "concurrency": 2},
        checkpoints={"interval": 20, "keep": 2})))
    run_dir = tmp_path / "run"
    env = {**os.environ, "TUI_TUNER_HEADLESS": "1"}
    cmd = [sys.executable, "-m", "tui_tuner.cli", "run", str(preset), "--headless", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: all(ckpt.list_checkpoints(run_dir / "trials" / str(n)) for n in (0, 1)),
                 what="first checkpoints", timeout=120)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    backend = optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))
    storage = optuna.storages.JournalStorage(backend)
    before = optuna.load_study(study_name="test", storage=storage)
    killed_running = [t.number for t in before.trials if t.state == TrialState.RUNNING]
    assert killed_running, "the kill should have caught trials mid-run"
    resume_steps = {n: ckpt.list_checkpoints(run_dir / "trials" / str(n))[-1].step for n in killed_running}

    out = subprocess.run([sys.executable, "-m", "tui_tuner.cli", "resume", str(run_dir), "--headless"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for n, step in resume_steps.items():
        assert step > 0
        assert f"trial {n} started from step {step}" in out.stdout
    after = optuna.load_study(study_name="test", storage=storage)
    assert not [t for t in after.trials if t.state == TrialState.RUNNING]
    assert [t.number for t in after.trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in after.trials)
    assert all(max(t.intermediate_values) == 160 for t in after.trials)


def test_exact_resume_of_a_full_fine_tune(demo_data, tmp_path):
    full = dict(learning_rate=1e-3)
    straight = FineTune("builtin:tiny-llama", "full", TrialParams(max_steps=12, batch_size=8, **full), demo_data)
    losses = [straight.step().loss for _ in range(12)]
    first = FineTune("builtin:tiny-llama", "full", TrialParams(max_steps=12, batch_size=8, **full), demo_data)
    for _ in range(6):
        first.step()
    info = ckpt.save(first, tmp_path)
    assert (info.path / "model.safetensors").is_file()
    resumed = FineTune("builtin:tiny-llama", "full", TrialParams(max_steps=12, batch_size=8, **full), demo_data,
                       weights_dir=str(info.path))
    ckpt.restore(resumed, info.path)
    assert [resumed.step().loss for _ in range(6)] == pytest.approx(losses[6:], rel=1e-5)


def test_ctrl_c_in_headless_mode_stops_cleanly(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text(dump_toml(tiny_preset_dict(params={"max_steps": 5000}, study={"n_trials": 2})))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "tui_tuner.cli", "run", str(preset), "--headless",
                             "--run-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run_dir / "trials/1/metrics.jsonl").is_file()
             and len((run_dir / "trials/1/metrics.jsonl").read_text().splitlines()) > 3, what="2 trials", timeout=120)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # a stop by a signal is 128 + the signal, as shells report it
    assert "stopping" in out and "interrupted at step" in out and "Traceback" not in err
    assert f"continue with: tui-tuner resume {run_dir}" in out
    backend = optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))
    study = optuna.load_study(study_name="test", storage=optuna.storages.JournalStorage(backend))
    # Interrupted, not told: RUNNING in Optuna with where to continue from; the sampler learns nothing from it.
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.RUNNING]
    for t in study.trials:
        at = t.user_attrs["interrupted_at_step"]
        assert t.user_attrs["interrupted_checkpoint"] == f"trials/{t.number}/checkpoints/step-{at}"
        assert ckpt.list_checkpoints(run_dir / "trials" / str(t.number))[-1].step == at


def test_resume_after_a_clean_stop_continues_interrupted_trials_under_their_own_numbers(make_sweep):
    sweep = make_sweep(params={"max_steps": 150}, study={"n_trials": 2, "concurrency": 2},
                       checkpoints={"interval": 1000}).start()
    wait_for(lambda: len(sweep.trials()) == 2 and all(t.step >= 5 for t in sweep.trials()), what="2 trials")
    sweep.stop()
    stopped = {t.number: t for t in sweep.trials()}
    assert {n: t.state for n, t in stopped.items()} == {0: "interrupted", 1: "interrupted"}
    assert all(t.checkpoints[-1].step == t.step for t in stopped.values())  # the stop checkpoint
    again = Sweep.open(sweep.run_dir).start()
    try:
        assert again.wait(180)
        trials = again.trials()
        assert [(t.number, t.state, t.step) for t in trials] == [(0, "complete", 150), (1, "complete", 150)]
        for t in trials:  # continued, not restarted: the curve up to the stop is the first run's
            before = sweep.series(t.number, "loss", max_points=None)
            assert again.series(t.number, "loss", max_points=None)[:len(before)] == before
        assert [t.state for t in _study_of(again).trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    finally:
        again.stop()
    # A second resume has nothing to continue and spends no more budget.
    third = Sweep.open(sweep.run_dir).start()
    try:
        assert third.wait(60)
        assert [(t.number, t.state) for t in third.trials()] == [(0, "complete"), (1, "complete")]
    finally:
        third.stop()


def _study_of(sweep: Sweep) -> optuna.Study:
    return optuna.load_study(study_name=sweep.preset.study_name, storage=sweep.study._storage)


@pytest.fixture
def slow_builds(monkeypatch):
    """Model builds that take until released, so a stop can land before a trial's first step."""
    import tui_tuner.training.finetune as runner_mod

    gate = {"slow": False}
    building = threading.Event()
    release = threading.Event()
    real = runner_mod.FineTune

    def fine_tune(*args, **kwargs):
        if gate["slow"]:
            building.set()
            release.wait(60)
        return real(*args, **kwargs)

    def stop_during_build(sweep: Sweep) -> None:
        """Stop the sweep while a trial's build is held, then let the build finish into the stop."""
        assert building.wait(60)
        stopper = threading.Thread(target=sweep.stop)
        stopper.start()
        wait_for(lambda: sweep.stopping, what="stop requested")
        release.set()
        stopper.join(60)
        gate["slow"] = False

    monkeypatch.setattr(runner_mod, "FineTune", fine_tune)
    gate["stop_during_build"] = stop_during_build
    yield gate
    release.set()


def test_a_trial_stopped_before_its_first_step_continues_under_its_number_on_resume(make_sweep, slow_builds):
    slow_builds["slow"] = True
    sweep = make_sweep(params={"max_steps": 20}, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials(), what="trial 0 asked")
    lr = sweep.trial(0).params["learning_rate"]
    slow_builds["stop_during_build"](sweep)
    again = Sweep.open(sweep.run_dir).start()
    try:
        assert again.wait(120)
        trials = again.trials()
        # The budget of 1 is spent once: by trial 0, which runs from step 0 under its own number.
        assert [(t.number, t.state) for t in trials] == [(0, "complete")]
        assert trials[0].params["learning_rate"] == lr and trials[0].step == 20 and trials[0].origin == "sampler"
    finally:
        again.stop()


def test_a_fork_stopped_before_its_first_step_continues_from_its_fork_checkpoint(make_sweep, slow_builds):
    sweep = make_sweep(params={"max_steps": 5000}, study={"n_trials": 1, "concurrency": 2},
                       checkpoints={"interval": 10}).start()
    wait_for(_running(sweep, 0, 12), what="parent past step 10")
    slow_builds["slow"] = True
    child = sweep.fork(0, step=10, params={"max_steps": 30})
    slow_builds["stop_during_build"](sweep)
    attrs = optuna.load_study(study_name="test", storage=sweep.study._storage).trials[child].user_attrs
    assert attrs["interrupted_at_step"] == 10
    again = Sweep.open(sweep.run_dir, n_trials=1).start()
    try:
        wait_for(lambda: again.trial(child).state == "complete", what="the fork, continued", timeout=120)
        cont = again.trial(child)
        assert cont.parent == 0 and cont.fork_step == 10 and cont.step == 30
        assert again.series(child, "loss", max_points=None)[0][0] <= 10  # its curve starts as its parent's
    finally:
        again.stop()


def _adalora(data, **kw) -> FineTune:
    # 50 steps: AdaLoRA warms up to step 5, prunes ranks every 10 steps, freezes them from step 40 on.
    p = dict(max_steps=50, batch_size=8, eval_batches=2, learning_rate=3e-3, warmup_steps=5, lora_r=4,
             lora_dropout=0.0, schedule="cosine")
    return FineTune("builtin:tiny-llama", "adalora", TrialParams(**{**p, **kw}), data)


def _kept_ranks(ft: FineTune) -> int:
    pattern = ft.model.peft_config["default"].rank_pattern
    return sum(sum(kept) for kept in pattern.values())


def test_exact_resume_of_adalora_while_pruning_and_after_the_ranks_are_frozen(demo_data, tmp_path):
    straight = _adalora(demo_data)
    losses = [straight.step().loss for _ in range(50)]
    first = _adalora(demo_data)
    saved = {}
    for _ in range(45):
        first.step()
        if first.step_count in (29, 45):
            saved[first.step_count] = ckpt.save(first, tmp_path)
    for at, info in saved.items():
        resumed = _adalora(demo_data)
        ckpt.restore(resumed, info.path)
        # Step 29 resumes mid-pruning: the prune at step 30 ranks triplets by the saved importance scores (scores
        # rebuilt from one step give a different pattern). Step 45 resumes in the frozen phase, where every step
        # re-applies the saved rank pattern.
        tail = [resumed.step().loss for _ in range(50 - at)]
        assert tail == pytest.approx(losses[at:], rel=1e-5, abs=1e-6), at
        assert resumed.model.peft_config["default"].rank_pattern == straight.model.peft_config["default"].rank_pattern
    assert _kept_ranks(straight) == 4 * len(straight.model.peft_config["default"].rank_pattern)
    # The pruned checkpoint is still a standard adapter that computes what the trial's model computes.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tui_tuner.training.model import builtin_model_dir

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model_dir()), saved[45].path)
    ids = torch.tensor([[50, 51, 52, 53]])
    loaded.eval()
    first.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, first.model(input_ids=ids).logits, atol=1e-5)


def test_adalora_fork_into_the_frozen_phase_freezes_the_ranks_at_the_target_budget(demo_data, tmp_path):
    parent = _adalora(demo_data)
    for _ in range(9):  # past the warm-up, before the first prune (step 10): no rank pattern yet
        parent.step()
    assert parent.model.peft_config["default"].rank_pattern is None
    info = ckpt.save(parent, tmp_path)
    # A 10-step plan freezes the ranks after step 8: the child starts in that phase and must allocate them now.
    child = _adalora(demo_data, max_steps=10)
    ckpt.restore(child, info.path)
    assert child.step().step == 10
    assert _kept_ranks(child) == 4 * len(child.model.peft_config["default"].rank_pattern)


def test_a_run_dir_made_by_release_0_1_0_still_resumes(tmp_path):
    """0.1.0 told stopped trials PRUNED (with interrupted_* attrs and absolute checkpoint paths): they keep
    continuing as forks of themselves, even from a moved run dir; the rest of the budget is then spent."""
    run = tmp_path / "moved-run"
    shutil.copytree(Path(__file__).parent / "fixtures" / "legacy-run-0.1.0", run)
    sweep = Sweep.open(run).start()
    try:
        assert sweep.wait(180)
        trials = {t.number: t for t in sweep.trials()}
        assert [trials[n].state for n in (0, 1)] == ["interrupted", "interrupted"]
        conts = {t.user_attrs["continues"]: t for t in trials.values() if "continues" in t.user_attrs}
        assert {n: (c.fork_step, c.state, c.step) for n, c in conts.items()} == {
            0: (10, "complete", 60), 1: (17, "complete", 60)}
        assert len(trials) == 5 and trials[4].origin == "sampler" and trials[4].state == "complete"  # budget 3
        stored = optuna.load_study(study_name="legacy", storage=sweep.study._storage).trials
        assert not [t for t in stored if t.state == TrialState.RUNNING]
    finally:
        sweep.stop()
    again = Sweep.open(run).start()  # continued once, not again
    try:
        assert again.wait(60) and len(again.trials()) == 5
    finally:
        again.stop()


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"step": 5,\n "time": oops}', "{f}:2: not valid JSON (Expecting value)"),
    (b'{"step": 5, "time": 1.0,\n "kind": "\xff"}', "{f}:2: not UTF-8 text (byte 0xff at column 11)"),
    (b'[5]', "{f}: not a checkpoint record"),
    (b'{"time": 1.0}', "{f}: not a valid checkpoint record (step missing)"),
    (b'{"step": "5", "time": 1.0, "eval_loss": "low", "kind": "weekly"}',
     "{f}: not a valid checkpoint record (step = '5', eval_loss = 'low', kind = 'weekly')"),
])
def test_a_damaged_checkpoint_json_names_the_file_and_line(tmp_path, content, expected):
    # It is read by resume, fork and export: a KeyError or a bare decode error there names nothing.
    info = ckpt.checkpoint_dir(tmp_path, 5) / ckpt.INFO_FILE
    info.parent.mkdir(parents=True)
    info.write_bytes(content)
    with pytest.raises(ValueError) as e:
        ckpt.list_checkpoints(tmp_path)
    assert str(e.value).startswith(expected.format(f=info)), e.value
    assert "\n" not in str(e.value)
