"""Faults in the study itself: a damaged journal, a failing storage, a study that is not this run's."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState as OptunaState

from tests.conftest import tiny_preset_dict, wait_for
from tests.fake_backend import FakeBackend
from tui_tuner.preset import Preset


def _sweep(run_dir: Path, backend: FakeBackend | None = None, **sections):  # type: ignore[no-untyped-def]
    from tui_tuner.engine.sweep import Sweep

    return Sweep(Preset.from_dict(tiny_preset_dict(**sections)), run_dir, backend=backend or FakeBackend())


def _reopen(run_dir: Path, **kw):  # type: ignore[no-untyped-def]
    from tui_tuner.engine.sweep import Sweep

    return Sweep.open(run_dir, backend=FakeBackend(), **kw)


def _load(journal: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    return optuna.load_study(study_name="test", storage=storage)


def _finished_run(tmp_path: Path, n: int = 2) -> Path:
    sweep = _sweep(tmp_path / "run", params={"max_steps": 30}, study={"n_trials": n, "concurrency": 1}).start()
    assert sweep.wait(30)
    sweep.stop()
    return sweep.run_dir


def test_a_journal_whose_last_whole_line_is_not_json_is_cut_too(tmp_path):
    run_dir = _finished_run(tmp_path)
    journal = run_dir / "optuna.journal"
    with journal.open("ab") as f:  # zeros where the last append was (a crash on a delayed-allocation fs)
        f.write(b"\0" * 40 + b"\n")
    again = _reopen(run_dir, n_trials=3).start()
    try:
        assert again.wait(30)
        repaired = [e for e in again.events_since(0) if e.kind == "journal_repaired"]
        assert len(repaired) == 1 and "41 bytes" in repaired[0].message and str(journal) in repaired[0].message
        assert [t.state for t in again.trials()] == ["complete"] * 3
    finally:
        again.stop()
    assert [t.state for t in _load(journal).trials] == [OptunaState.COMPLETE] * 3


def test_export_repairs_a_torn_journal_and_says_so(tmp_path):
    from tui_tuner.export import export_run

    run_dir = _finished_run(tmp_path)
    journal = run_dir / "optuna.journal"
    whole = len(_load(journal).trials)
    with journal.open("ab") as f:
        f.write(b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "par')  # a torn append
    said = export_run(run_dir)
    assert said.splitlines()[0].startswith(f"{journal} ended in a damaged record (")
    assert journal.read_bytes().endswith(b"\n") and len(list(run_dir.glob("optuna.journal.torn-*"))) == 1
    assert len(_load(journal).trials) == whole
    # A resume appends after the cut, and the study still loads.
    again = _reopen(run_dir, n_trials=3).start()
    try:
        assert again.wait(30)
    finally:
        again.stop()
    assert len(_load(journal).trials) == 3


def test_export_of_a_live_run_never_cuts_its_journal(tmp_path):
    from tui_tuner.export import export_run

    sweep = _sweep(tmp_path / "run", params={"max_steps": 100_000}, study={"n_trials": 1}).start()
    try:
        wait_for(lambda: sweep.trials() and sweep.trial(0).step > 2, what="stepping")
        journal = sweep.run_dir / "optuna.journal"
        with journal.open("ab") as f:  # what a live writer's append looks like halfway
            f.write(b'{"op_code": 5')
        assert "damaged record" not in export_run(sweep.run_dir)
        assert journal.read_bytes().endswith(b'{"op_code": 5')
    finally:
        sweep.stop()


def test_a_storage_error_in_a_report_halts_the_sweep_and_interrupts_healthy_trials(tmp_path, monkeypatch):
    from optuna.storages import JournalStorage

    sweep = _sweep(tmp_path / "run", params={"max_steps": 400, "eval_interval": 10},
                   study={"n_trials": 5, "concurrency": 2}).start()
    wait_for(lambda: len(sweep.trials()) == 2 and all(t.step > 12 for t in sweep.trials()), what="both reported")
    real = JournalStorage.set_trial_intermediate_value

    def disk_full(self, *a, **k):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JournalStorage, "set_trial_intermediate_value", disk_full)
    assert sweep.wait(60), "a broken storage must not hang wait()"
    assert "No space left on device" in (sweep.halted or "") and "optuna.journal" in (sweep.halted or "")
    halted = [e for e in sweep.events_since(0) if e.kind == "sweep_halted"]
    assert len(halted) == 1 and "No space left on device" in halted[0].data["error"]
    assert [t.state for t in sweep.trials()] == ["interrupted", "interrupted"]  # no new trial started
    assert [t.state for t in sweep.study.trials] == [OptunaState.RUNNING, OptunaState.RUNNING]  # never FAILED
    assert sweep.resumable
    sweep.stop()
    monkeypatch.setattr(JournalStorage, "set_trial_intermediate_value", real)
    again = _reopen(sweep.run_dir).start()
    try:
        assert again.wait(60)
        assert [t.state for t in again.trials()] == ["complete"] * 5
    finally:
        again.stop()


def test_a_storage_error_in_the_final_tell_keeps_the_trial_to_tell_at_resume(tmp_path, monkeypatch):
    from optuna.storages import JournalStorage

    real = JournalStorage.set_trial_state_values

    def broken(self, trial_id, state, values=None):  # type: ignore[no-untyped-def]
        if state == OptunaState.COMPLETE:
            raise OSError(errno.EIO, "Input/output error")
        return real(self, trial_id, state, values)

    monkeypatch.setattr(JournalStorage, "set_trial_state_values", broken)
    sweep = _sweep(tmp_path / "run", params={"max_steps": 20}, study={"n_trials": 2, "concurrency": 1}).start()
    assert sweep.wait(60)
    assert sweep.trial(0).state == "interrupted" and len(sweep.trials()) == 1
    assert "Input/output error" in (sweep.halted or "")
    sweep.stop()
    monkeypatch.setattr(JournalStorage, "set_trial_state_values", real)
    again = _reopen(sweep.run_dir).start()
    try:
        assert again.wait(60)
        assert [t.state for t in again.trials()] == ["complete", "complete"]
    finally:
        again.stop()


def _write_metrics(run_dir: Path) -> None:
    (run_dir / "trials" / "0").mkdir(parents=True, exist_ok=True)
    (run_dir / "trials" / "0" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")


@pytest.mark.parametrize("damage", ["emptied", "deleted"])
def test_resume_refuses_a_run_whose_journal_is_gone_but_whose_trials_are_not(tmp_path, damage):
    from tui_tuner.engine.sweep import SweepError

    run_dir = _finished_run(tmp_path)
    journal = run_dir / "optuna.journal"
    journal.write_bytes(b"") if damage == "emptied" else journal.unlink()
    before = (run_dir / "trials" / "0" / "metrics.jsonl").read_bytes()
    with pytest.raises(SweepError, match=rf"{journal}: holds no study 'test', but {run_dir / 'trials'} holds "):
        _reopen(run_dir).start()
    assert (run_dir / "trials" / "0" / "metrics.jsonl").read_bytes() == before  # nothing appended
    assert not journal.exists() or journal.stat().st_size == 0


def test_a_new_sweep_refuses_a_run_dir_that_holds_another_runs_journal(tmp_path):
    from tui_tuner.engine.sweep import SweepError

    run_dir = _finished_run(tmp_path)
    (run_dir / "sweep.json").unlink()  # a journal without the run's own files: not this run's study
    with pytest.raises(SweepError, match=r"optuna.journal already holds a study 'test' \(2 trials\)"):
        _sweep(run_dir).start()
    assert not (run_dir / "sweep.json").exists()  # refused before anything was written
    from tui_tuner.engine.sweep import Sweep

    # n_trials is the study's budget, whoever spent it: joining with 3 adds the one trial left of it
    preset = Preset.from_dict(tiny_preset_dict(params={"max_steps": 30}, study={"n_trials": 3}))
    joined = Sweep(preset, run_dir, backend=FakeBackend(), join=True).start()
    try:
        assert joined.wait(30)
        assert len(joined.study.trials) == 3
        assert [t.number for t in joined.trials()] == [2]  # its own trial; the first run's are not its to run
    finally:
        joined.stop()


def test_two_new_sweeps_on_one_storage_url_do_not_mix_their_trials(tmp_path):
    from tui_tuner.engine.sweep import Sweep, SweepError

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    preset = Preset.from_dict(tiny_preset_dict(params={"max_steps": 20}, study={"n_trials": 1}))
    first = Sweep(preset, tmp_path / "a", storage=url, backend=FakeBackend()).start()
    assert first.wait(30)
    first.stop()
    with pytest.raises(SweepError, match=r"--storage sqlite:///.*shared.db already holds a study 'test' \(1 trial"):
        Sweep(preset, tmp_path / "b", storage=url, backend=FakeBackend()).start()
    more = Preset.from_dict(tiny_preset_dict(params={"max_steps": 20}, study={"n_trials": 2}))
    both = Sweep(more, tmp_path / "b", storage=url, backend=FakeBackend(), join=True).start()
    try:
        assert both.wait(30) and len(both.study.trials) == 2  # the study's budget of 2, one spent by the first
    finally:
        both.stop()


class _RelativeSamplerBreaksOnSecondTrial(optuna.samplers.RandomSampler):
    """A sampler whose relative sampling fails from the second trial on: Optuna samples relative params lazily,
    so the error comes out of trial.suggest_*, after ask() has returned."""

    def __init__(self, error: Exception) -> None:
        super().__init__(seed=0)
        self.error = error

    def infer_relative_search_space(self, study, trial):  # type: ignore[no-untyped-def]
        return {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}

    def sample_relative(self, study, trial, search_space):  # type: ignore[no-untyped-def]
        if trial.number >= 1:
            raise self.error
        return {"learning_rate": 1e-3}


@pytest.mark.parametrize("error", [ValueError("no finite candidate"), RuntimeError("singular matrix")])
def test_a_sampler_error_inside_suggest_fails_that_trial_and_halts_without_spending_budget(tmp_path, monkeypatch,
                                                                                         error):
    real = optuna.samplers.RandomSampler
    monkeypatch.setattr("tui_tuner.engine.study_gateway.make_sampler",
                        lambda *a, **k: _RelativeSamplerBreaksOnSecondTrial(error))
    sweep = _sweep(tmp_path / "run", params={"max_steps": 10}, study={"n_trials": 3, "concurrency": 1}).start()
    assert sweep.wait(30)
    assert sweep.halted is not None and str(error) in sweep.halted  # the sampler's failure, not "invalid params"
    assert [t.state for t in sweep.study.trials] == [OptunaState.COMPLETE, OptunaState.FAIL]  # never left RUNNING
    assert str(error) in sweep.study.trials[1].user_attrs["error"]
    assert sweep.scheduler.sampled == 1
    sweep.stop()
    monkeypatch.setattr("tui_tuner.engine.study_gateway.make_sampler", lambda *a, **k: real(seed=1))
    again = _reopen(sweep.run_dir).start()  # with a working sampler: two more proposals fill the budget of 3
    try:
        assert again.wait(30)
        assert [t.state for t in again.trials()] == ["complete", "failed", "complete", "complete"]
    finally:
        again.stop()


def _db_locked() -> Exception:
    import sqlalchemy.exc

    return sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("database is locked"))


@pytest.mark.parametrize("make_error", [_db_locked, lambda: optuna.exceptions.StorageInternalError("commit failed")])
def test_a_database_error_in_a_report_halts_the_sweep_like_an_os_error(tmp_path, monkeypatch, make_error):
    from optuna.storages import JournalStorage

    sweep = _sweep(tmp_path / "run", params={"max_steps": 400, "eval_interval": 10},
                   study={"n_trials": 3, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 12, what="reported")
    error = make_error()

    def broken(self, *a, **k):  # type: ignore[no-untyped-def]
        raise error

    monkeypatch.setattr(JournalStorage, "set_trial_intermediate_value", broken)
    assert sweep.wait(60)
    assert str(error).splitlines()[0] in (sweep.halted or "")
    assert [t.state for t in sweep.trials()] == ["interrupted"]
    assert [t.state for t in sweep.study.trials] == [OptunaState.RUNNING]  # never FAILED
    sweep.stop()


def test_a_live_trial_handle_is_built_under_the_gateway_lock(tmp_path, monkeypatch):
    sweep = _sweep(tmp_path / "run", params={"max_steps": 400}, study={"n_trials": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 2, what="stepping")
    sweep.stop()
    again = _reopen(sweep.run_dir)
    held: list[bool] = []
    real_trial = optuna.Trial

    class Spy(real_trial):  # type: ignore[misc,valid-type]
        def __init__(self, study, trial_id):  # type: ignore[no-untyped-def]
            held.append(again.gateway.lock._is_owned())
            super().__init__(study, trial_id)

    monkeypatch.setattr(optuna, "Trial", Spy)
    again.start()
    try:
        assert held == [True]
    finally:
        again.stop()


def test_study_timeout_counts_the_time_used_before_a_resume(tmp_path):
    import time

    sweep = _sweep(tmp_path / "run", params={"max_steps": 100_000},
                   study={"n_trials": 5, "concurrency": 1, "timeout": 1.0}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 2, what="stepping")
    time.sleep(1.2)  # the timeout is spent while trial 0 runs
    sweep.stop()
    assert sweep.study.user_attrs["elapsed_s"] >= 1.0
    again = _reopen(sweep.run_dir).start()
    try:
        assert not again.scheduler.budget_left()
        wait_for(lambda: again.trial(0).state == "running", what="trial 0 continued")
        again.kill(0)
        assert again.wait(30)
        assert len(again.study.trials) == 1  # no new trial: the timeout was used up before the resume
    finally:
        again.stop()


def test_an_interrupted_trial_whose_params_no_longer_validate_is_failed_at_resume(tmp_path):
    sweep = _sweep(tmp_path / "run", params={"max_steps": 400}, study={"n_trials": 1, "concurrency": 2}).start()
    n = sweep.enqueue({"warmup_steps": 30})
    wait_for(lambda: sweep.trial(n).step > 2, what="the enqueued trial stepping")
    sweep.stop()
    preset = sweep.run_dir / "preset.toml"
    text = preset.read_text()
    assert "max_steps = 400" in text
    preset.write_text(text.replace("max_steps = 400", "max_steps = 20"))  # shorter than its warmup of 30
    again = _reopen(sweep.run_dir).start()
    try:
        assert again.wait(30)
        t = again.trial(n)
        assert t.state == "failed" and "warmup_steps (30) is longer than the run" in (t.error or "")
        assert again.study.trials[n].state == OptunaState.FAIL
        said = [e for e in again.events_since(0) if e.kind == "failed" and e.trial == n]
        assert len(said) == 1 and "failed at resume" in said[0].message
        assert not again.resumable
    finally:
        again.stop()


def test_a_trial_left_half_asked_by_a_crash_is_failed_at_resume_and_not_counted(tmp_path):
    run_dir = _finished_run(tmp_path, n=1)
    study = _load(run_dir / "optuna.journal")
    study.ask()  # as a kill -9 between Optuna's ask and the engine's origin attr leaves it: RUNNING, no params
    again = _reopen(run_dir, n_trials=2).start()
    try:
        assert again.wait(30)
        assert [t.state for t in again.trials()] == ["complete", "failed", "complete"]
        assert "while the sampler was creating it" in (again.trial(1).error or "")
    finally:
        again.stop()


@pytest.mark.parametrize("broken", ["tell", "attrs_and_tell"])
def test_a_storage_error_in_a_kills_tell_is_said_and_the_kill_is_told_at_resume(tmp_path, monkeypatch, broken):
    from optuna.storages import JournalStorage

    sweep = _sweep(tmp_path / "run", params={"max_steps": 100_000, "eval_interval": 5},
                   study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 6, what="reported")

    def io_error(self, *a, **k):  # type: ignore[no-untyped-def]
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(JournalStorage, "set_trial_state_values", io_error)
    if broken == "attrs_and_tell":
        monkeypatch.setattr(JournalStorage, "set_trial_user_attr", io_error)
    sweep.kill(0)
    assert sweep.wait(30)
    assert sweep.trial(0).state == "interrupted"
    said = [e.message for e in sweep.events_since(0) if e.kind == "interrupted" and e.trial == 0]
    assert said and "its kill is told when the run is resumed" in said[-1]
    sweep.stop()
    monkeypatch.undo()
    backend = FakeBackend()
    again = _reopen(sweep.run_dir)
    again.backend = backend
    again.start()
    try:
        assert again.wait(30)
        assert again.trial(0).state == "killed" and backend.built == []  # told, not continued
        t = again.study.trials[0]
        assert t.state == OptunaState.PRUNED and t.user_attrs["stopped_by_user"] is True
        assert any(e.kind == "killed" and "the kill is told now" in e.message for e in again.events_since(0))
    finally:
        again.stop()
