"""Damaged or missing checkpoints at resume: fall back loudly, re-stage forks, clean crash leftovers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from optuna.trial import TrialState as OptunaState

from tests.conftest import tiny_preset_dict, wait_for
from tests.fake_backend import FakeBackend, FakeTrainer
from tui_tuner.preset import Preset
from tui_tuner.training.checkpoint_files import (
    INFO_FILE,
    CheckpointInfo,
    CheckpointKind,
    checkpoint_problem,
    file_digests,
    list_checkpoints,
)


class HashingFake(FakeBackend):
    """The fake trainer, recording file sizes and hashes in checkpoint.json as the real save does."""

    def save(self, trainer: FakeTrainer, trial_dir: Path, eval_loss: float | None,
             kind: CheckpointKind) -> CheckpointInfo:
        info = super().save(trainer, trial_dir, eval_loss, kind)
        record = json.loads((info.path / INFO_FILE).read_text())
        (info.path / INFO_FILE).write_text(json.dumps({**record, "files": file_digests(info.path)}))
        return info


def _sweep(run_dir: Path, backend: FakeBackend, **sections):  # type: ignore[no-untyped-def]
    from tui_tuner.engine.sweep import Sweep

    return Sweep(Preset.from_dict(tiny_preset_dict(**sections)), run_dir, backend=backend)


def _stopped_at(tmp_path: Path, step: int, backend: FakeBackend | None = None):  # type: ignore[no-untyped-def]
    """One trial stopped past `step`, with checkpoints every 10 steps and its stop checkpoint."""
    sweep = _sweep(tmp_path / "run", backend or HashingFake(), params={"max_steps": 100_000},
                   study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > step, what=f"step {step}")
    sweep.stop()
    return sweep


def _reopen(run_dir: Path, backend: FakeBackend):  # type: ignore[no-untyped-def]
    from tui_tuner.engine.sweep import Sweep

    return Sweep.open(run_dir, backend=backend)


def test_checkpoint_problem_names_the_damaged_file(tmp_path):
    d = tmp_path / "step-3"
    d.mkdir()
    (d / "a.bin").write_bytes(b"x" * 100)
    (d / INFO_FILE).write_text(json.dumps({"step": 3, "time": 1.0, "files": file_digests(d)}))
    assert checkpoint_problem(d) is None
    (d / "a.bin").write_bytes(b"y" * 100)
    assert checkpoint_problem(d) == f"{d / 'a.bin'}: sha256 differs from the one written at save time"
    (d / "a.bin").write_bytes(b"y" * 70)
    assert checkpoint_problem(d) == f"{d / 'a.bin'}: 70 bytes, 100 were written"
    (d / "a.bin").unlink()
    assert checkpoint_problem(d) == f"{d / 'a.bin'}: missing"
    (d / INFO_FILE).write_text(json.dumps({"step": 3, "time": 1.0}))  # written before digests: presence only
    assert checkpoint_problem(d) == f"{d}: holds no checkpoint files"
    (d / "a.bin").write_bytes(b"")
    assert checkpoint_problem(d) == f"{d / 'a.bin'}: empty"


def test_a_truncated_newest_checkpoint_falls_back_to_the_older_intact_one(tmp_path):
    sweep = _stopped_at(tmp_path, 25)
    ckpts = list_checkpoints(sweep.run_dir / "trials" / "0")
    newest, older = ckpts[-1], ckpts[-2]
    state = newest.path / "state.json"
    size = state.stat().st_size
    state.write_bytes(state.read_bytes()[:-3])  # `truncate -s -3`
    backend = HashingFake()
    again = _reopen(sweep.run_dir, backend).start()
    try:
        wait_for(lambda: again.trial(0).state == "running", what="resumed")
        assert backend.built == [(100_000, older.step)]
        damaged = [e for e in again.events_since(0) if e.kind == "checkpoint_damaged"]
        assert len(damaged) == 1 and damaged[0].data == {
            "step": newest.step, "problem": f"{state}: {size - 3} bytes, {size} were written", "used_step": older.step}
        assert f"it continues from step {older.step}" in damaged[0].message
    finally:
        again.stop()


def test_with_every_checkpoint_damaged_the_trial_restarts_from_step_0_and_says_so(tmp_path):
    sweep = _stopped_at(tmp_path, 15)
    for c in list_checkpoints(sweep.run_dir / "trials" / "0"):
        (c.path / "state.json").write_text("{}")
    backend = HashingFake()
    again = _reopen(sweep.run_dir, backend).start()
    try:
        wait_for(lambda: again.trial(0).state == "running", what="resumed")
        assert backend.built == [(100_000, 0)]
        damaged = [e for e in again.events_since(0) if e.kind == "checkpoint_damaged"]
        assert damaged and all("restarts from step 0" in e.message for e in damaged)
    finally:
        again.stop()


def test_a_deleted_stop_checkpoint_continues_from_the_newest_other_one_loudly(tmp_path):
    sweep = _stopped_at(tmp_path, 25, FakeBackend())  # checkpoints without digests, as before this release
    stop = sweep.study.trials[0].user_attrs["interrupted_checkpoint"]
    shutil.rmtree(sweep.run_dir / stop)
    left = list_checkpoints(sweep.run_dir / "trials" / "0")[-1]
    backend = FakeBackend()
    again = _reopen(sweep.run_dir, backend).start()
    try:
        wait_for(lambda: again.trial(0).state == "running", what="resumed")
        assert backend.built == [(100_000, left.step)]
        missing = [e for e in again.events_since(0) if e.kind == "resume_checkpoint_missing"]
        assert len(missing) == 1 and stop in missing[0].message
        assert f"continues from step {left.step}" in missing[0].message
    finally:
        again.stop()


def _with_queued_fork(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Trial 0 stopped, and a fork of it queued (concurrency 1 keeps it waiting) when the sweep stopped."""
    sweep = _sweep(tmp_path / "run", HashingFake(), params={"max_steps": 100_000},
                   study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 25, what="stepping")
    child = sweep.fork(0, step=20, params={"learning_rate": 1e-3})
    assert sweep.trial(child).state == "waiting"
    sweep.stop()
    return sweep, child


def test_a_fork_whose_checkpoint_copy_was_lost_is_staged_again_from_its_parent(tmp_path):
    sweep, child = _with_queued_fork(tmp_path)
    # A crash between enqueue_trial and the rename: the copy is still in staging, and never made it.
    copy = sweep.run_dir / "trials" / str(child) / "checkpoints" / "step-20"
    staging = sweep.run_dir / "trials" / ".staging-crash"
    staging.mkdir()
    copy.rename(staging / "step-20")
    tmp_ckpt = sweep.run_dir / "trials" / "0" / "checkpoints" / ".tmp-step-31-x"
    tmp_ckpt.mkdir()
    backend = HashingFake()
    again = _reopen(sweep.run_dir, backend)
    again.preset = again.preset.model_copy(update={"study": again.preset.study.model_copy(update={"concurrency": 2})})
    again.scheduler.concurrency = again.scheduler.requested_concurrency = 2
    again.start()
    try:
        wait_for(lambda: again.trial(child).state == "running", what="the fork runs")
        assert (100_000, 20) in backend.built
        kinds = {e.kind: e for e in again.events_since(0) if not e.earlier}
        assert "fork_restaged" in kinds and "step-20 is missing" in kinds["fork_restaged"].message
        assert {"removed trials/.staging-crash", "removed trials/0/checkpoints/.tmp-step-31-x"} <= set(
            kinds["leftovers_removed"].data["items"])
        assert not staging.exists() and not tmp_ckpt.exists()
    finally:
        again.stop()


def test_a_fork_whose_copy_and_parent_checkpoint_are_both_gone_is_cancelled_with_the_reason(tmp_path):
    sweep, child = _with_queued_fork(tmp_path)
    shutil.rmtree(sweep.run_dir / "trials" / str(child) / "checkpoints" / "step-20")
    shutil.rmtree(sweep.run_dir / "trials" / "0" / "checkpoints" / "step-20")
    again = _reopen(sweep.run_dir, HashingFake()).start()
    try:
        wait_for(lambda: again.trial(0).state == "running", what="the parent resumes")
        assert again.trial(child).state == "cancelled"
        t = again.study.trials[child]
        assert t.state == OptunaState.FAIL and "trials/0/checkpoints/step-20 is gone too" in t.user_attrs[
            "cancelled_reason"]
        assert any(e.kind == "fork_cancelled" and e.trial == child for e in again.events_since(0))
    finally:
        again.stop()


def test_a_re_save_cut_off_by_a_crash_puts_the_old_checkpoint_back(tmp_path):
    sweep = _stopped_at(tmp_path, 15)
    c = list_checkpoints(sweep.run_dir / "trials" / "0")[-1]
    c.path.rename(c.path.with_name(c.path.name + ".old"))  # between save's two renames
    backend = HashingFake()
    again = _reopen(sweep.run_dir, backend).start()
    try:
        wait_for(lambda: again.trial(0).state == "running", what="resumed")
        assert backend.built == [(100_000, c.step)]
        left = next(e for e in again.events_since(0) if e.kind == "leftovers_removed")
        assert f"restored {sweep.layout.relative(c.path)} from {c.path.name}.old" in left.message
    finally:
        again.stop()


def test_a_real_truncated_adapter_falls_back_to_the_older_checkpoint(make_sweep):
    from tui_tuner import Sweep

    sweep = make_sweep(params={"max_steps": 5000}, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 21, what="past step 20")
    sweep.stop()
    ckpts = list_checkpoints(sweep.run_dir / "trials" / "0")
    newest, older = ckpts[-1], ckpts[-2]
    assert "adapter_model.safetensors" in json.loads((newest.path / INFO_FILE).read_text())["files"]
    adapter = newest.path / "adapter_model.safetensors"
    with adapter.open("r+b") as f:
        f.truncate(adapter.stat().st_size - 30)
    again = Sweep.open(sweep.run_dir).start()
    try:
        wait_for(lambda: again.trial(0).state == "running" and again.trial(0).step > older.step, what="resumed")
        damaged = [e for e in again.events_since(0) if e.kind == "checkpoint_damaged"]
        assert len(damaged) == 1 and damaged[0].data["used_step"] == older.step
        assert str(adapter) in damaged[0].data["problem"]
        resumed = [e for e in again.events_since(0) if e.kind == "resuming"]
        assert f"from checkpoint step {older.step}" in resumed[-1].message
    finally:
        again.stop()
