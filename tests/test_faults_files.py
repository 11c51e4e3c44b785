"""Faults in the files a sweep writes (disk full, unwritable files): never a hang, never a trial lost to them."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.conftest import tiny_preset_dict, wait_for
from tests.fake_backend import FakeBackend
from tui_tuner.engine.jsonl import JsonlWriter, read_jsonl
from tui_tuner.preset import Preset


def _sweep(tmp_path: Path, **sections):  # type: ignore[no-untyped-def]
    from tui_tuner.engine.sweep import Sweep

    return Sweep(Preset.from_dict(tiny_preset_dict(**sections)), tmp_path / "run", backend=FakeBackend())


@pytest.fixture
def failing_writes(monkeypatch):
    """`fail[path_suffix] = OSError`: writes to files whose path ends so raise it (close too, with `close`)."""
    fail: dict[str, OSError] = {}
    real_write, real_close = JsonlWriter.write, JsonlWriter.close

    def _match(self: JsonlWriter) -> OSError | None:
        return next((e for suffix, e in fail.items() if str(self.path).endswith(suffix)), None)

    def write(self, row):  # type: ignore[no-untyped-def]
        if (e := _match(self)) is not None:
            raise e
        real_write(self, row)

    def close(self):  # type: ignore[no-untyped-def]
        real_close(self)
        if (e := _match(self)) is not None and fail.get("close"):
            raise e

    monkeypatch.setattr(JsonlWriter, "write", write)
    monkeypatch.setattr(JsonlWriter, "close", close)
    return fail


def test_a_failed_metrics_write_fails_that_trial_and_never_hangs_the_sweep(tmp_path, failing_writes):
    sweep = _sweep(tmp_path, params={"max_steps": 300}, study={"n_trials": 2, "concurrency": 2}).start()
    wait_for(lambda: len(sweep.trials()) == 2 and sweep.trial(0).step > 5, what="both stepping")
    full = OSError(errno.ENOSPC, "No space left on device")
    failing_writes["trials/0/metrics.jsonl"] = full
    failing_writes["close"] = full  # and closing it fails too, in the runner's cleanup
    assert sweep.wait(60), "the scheduler must count the failed trial"
    assert sweep.trial(0).state == "failed" and "No space left on device" in sweep.trial(0).error
    assert sweep.trial(1).state == "complete"


def test_an_unwritable_event_log_keeps_every_event_and_every_trial(tmp_path, failing_writes):
    sweep = _sweep(tmp_path, params={"max_steps": 200}, study={"n_trials": 3, "concurrency": 2}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 5, what="stepping")
    failing_writes["events.jsonl"] = PermissionError(errno.EPERM, "Operation not permitted")
    wait_for(lambda: any(e.kind == "event_log_failed" for e in sweep.events_since(0)), what="warned")
    wait_for(lambda: any(t.state == "complete" for t in sweep.trials()), what="events while it fails")
    del failing_writes["events.jsonl"]
    assert sweep.wait(60)
    sweep.stop()
    assert [t.state for t in sweep.trials()] == ["complete"] * 3
    in_memory = [(e.kind, e.message) for e in sweep.events_since(0) if e.kind != "event_log_failed"]
    on_disk = [(r["event"], r["message"]) for r in read_jsonl(sweep.run_dir / "events.jsonl")]
    assert on_disk == in_memory  # all of them, once each, in order
    assert len([e for e in sweep.events_since(0) if e.kind == "event_log_failed"]) == 1  # warned once


def test_a_short_write_never_tears_the_next_record(tmp_path, monkeypatch):
    w = JsonlWriter(tmp_path / "m.jsonl")
    w.write({"step": 1})
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, data[:5]))  # a full disk takes 5 bytes
    with pytest.raises(OSError, match="short write"):
        w.write({"step": 2, "loss": 1.5})
    monkeypatch.setattr(os, "write", real)
    w.write({"step": 3})
    w.close()
    assert read_jsonl(tmp_path / "m.jsonl") == [{"step": 1}, {"step": 3}]
    assert (tmp_path / "m.jsonl").read_text().count("\n") == 3


def test_deleting_the_lock_file_does_not_let_a_second_sweep_in(tmp_path):
    from tui_tuner.engine.run_lock import RunDirLockedError
    from tui_tuner.engine.sweep import Sweep

    sweep = _sweep(tmp_path, params={"max_steps": 100_000}, study={"n_trials": 1}).start()
    try:
        (sweep.run_dir / ".lock").unlink()
        with pytest.raises(RunDirLockedError, match="is in use by a running tui-tuner"):
            Sweep.open(sweep.run_dir, backend=FakeBackend()).start()
    finally:
        sweep.stop()


def test_a_stale_journal_lock_from_a_killed_process_is_cleared_at_once(tmp_path):
    import time

    from tui_tuner.engine.sweep import Sweep

    sweep = _sweep(tmp_path, params={"max_steps": 50}, study={"n_trials": 1}).start()
    assert sweep.wait(30)
    sweep.stop()
    # What JournalFileSymlinkLock leaves when its holder is killed mid-write.
    os.symlink(str(sweep.run_dir / "optuna.journal"), str(sweep.run_dir / "optuna.journal.lock"))
    t0 = time.monotonic()
    again = Sweep.open(sweep.run_dir, backend=FakeBackend(), n_trials=2).start()
    try:
        assert again.wait(30)
        assert time.monotonic() - t0 < 5  # Optuna alone retries for ~30 s
        assert any(e.kind == "stale_lock_removed" for e in again.events_since(0))
        assert [t.state for t in again.trials()] == ["complete", "complete"]
    finally:
        again.stop()


def test_a_torn_journal_is_cut_back_to_its_last_whole_record_and_the_study_resumes(tmp_path):
    from tui_tuner.engine.sweep import Sweep

    sweep = _sweep(tmp_path, params={"max_steps": 30}, study={"n_trials": 2, "concurrency": 1}).start()
    assert sweep.wait(30)
    sweep.stop()
    journal = sweep.run_dir / "optuna.journal"
    with journal.open("r+b") as f:  # what `truncate -s -30` after a kill -9 leaves
        f.truncate(journal.stat().st_size - 30)
    again = Sweep.open(sweep.run_dir, backend=FakeBackend(), n_trials=3).start()
    try:
        assert again.wait(30)
        assert any(e.kind == "journal_repaired" for e in again.events_since(0))
        assert list(sweep.run_dir.glob("optuna.journal.torn-*"))
        assert [t.state for t in again.trials()][:1] == ["complete"] and len(again.trials()) == 3
    finally:
        again.stop()
    import optuna  # and the repaired journal loads from scratch, with what the resume added after the cut

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    assert len(optuna.load_study(study_name="test", storage=storage).trials) == 3


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 144192 vs 144080"),  # torch.save
])
def test_a_checkpoint_that_fails_for_lack_of_space_says_so_and_where(tmp_path, monkeypatch, error):
    def full(self, trainer, trial_dir, eval_loss, kind):  # type: ignore[no-untyped-def]
        raise error

    monkeypatch.setattr(FakeBackend, "save", full)
    sweep = _sweep(tmp_path, params={"max_steps": 20}, study={"n_trials": 1, "concurrency": 1}).start()
    try:
        assert sweep.wait(30)
        failed = [e.message for e in sweep.events_since(0) if e.kind == "checkpoint_failed"]
        where = sweep.run_dir / "trials" / "0" / "checkpoints"
        assert failed and all(f"failed: no space left on {where} (" in m for m in failed), failed
        assert sweep.trial(0).state == "complete"  # the trial goes on
    finally:
        sweep.stop()


def test_export_never_names_as_the_best_a_checkpoint_that_did_not_score_its_eval_loss(tmp_path, monkeypatch):
    from tui_tuner.export import export_run

    real_save = FakeBackend.save

    def final_fails(self, trainer, trial_dir, eval_loss, kind):  # type: ignore[no-untyped-def]
        if kind == "final":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, trainer, trial_dir, eval_loss, kind)

    monkeypatch.setattr(FakeBackend, "save", final_fails)
    sweep = _sweep(tmp_path, params={"max_steps": 30}, study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(30)
    sweep.stop()
    said = export_run(sweep.run_dir).splitlines()[-1]
    assert said.startswith("best trial #0: eval loss ") and "checkpoint: none kept with its eval loss" in said
    assert "step 20" in said  # the newest kept, named as what it is
    monkeypatch.setattr(FakeBackend, "save", real_save)
    ok = _sweep(tmp_path / "ok", params={"max_steps": 30}, study={"n_trials": 1, "concurrency": 1}).start()
    assert ok.wait(30)
    ok.stop()
    assert export_run(ok.run_dir).endswith(f"checkpoint: {ok.run_dir / 'trials' / '0' / 'checkpoints' / 'step-30'}")
