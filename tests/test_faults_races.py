"""Races forced deterministically (Events hold one side): commands against stop(), stop() against start(), a
trial thread that cannot start, and a pause against a queued resume."""

from __future__ import annotations

import threading
from pathlib import Path

from optuna.trial import TrialState as OptunaState

from tests.conftest import tiny_preset_dict, wait_for
from tests.fake_backend import FakeBackend
from tui_tuner.preset import Preset

LONG = {"max_steps": 100_000}


def _reopen(run_dir: Path, backend: FakeBackend | None = None):  # type: ignore[no-untyped-def]
    from tui_tuner.engine.sweep import Sweep

    return Sweep.open(run_dir, backend=backend or FakeBackend())


def test_a_fork_whose_copy_outlasts_a_stop_is_refused_and_wait_returns(fake_sweep, monkeypatch):
    from tui_tuner.engine import sweep as sweep_mod
    from tui_tuner.engine.sweep import SweepError

    sweep = fake_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 3, what="stepping")
    step = sweep.checkpoint(0).step
    copying, go_on = threading.Event(), threading.Event()
    real_stage = sweep_mod._stage_tree

    def slow_copy(src, root):  # type: ignore[no-untyped-def]
        copying.set()
        go_on.wait(10)
        return real_stage(src, root)

    monkeypatch.setattr(sweep_mod, "_stage_tree", slow_copy)
    result: list[BaseException | int] = []
    forker = threading.Thread(target=lambda: result.append(_call(lambda: sweep.fork(0, step=step))))
    forker.start()
    assert copying.wait(10)
    sweep.stop()  # while the fork copies (past its first check)
    go_on.set()
    forker.join(10)
    assert isinstance(result[0], SweepError) and "stopped" in str(result[0])
    assert sweep.wait(2), "an enqueue racing stop() must not reopen the stopped sweep"
    assert len(sweep.study.trials) == 1  # nothing written to the study after the stop
    assert not list((sweep.run_dir / "trials").glob(".staging-*"))


def _call(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except BaseException as e:  # the test inspects it
        return e


def test_stop_waits_for_an_enqueue_mid_write_before_it_lets_go_of_the_run_dir(fake_sweep, monkeypatch):
    from tui_tuner.engine.run_lock import RunDirLock

    sweep = fake_sweep(params={"max_steps": 20}, study={"n_trials": 1, "concurrency": 1}).start()
    assert sweep.wait(30)  # no trial thread left that would itself wait for the gateway lock
    order: list[str] = []
    writing, go_on = threading.Event(), threading.Event()
    real_enqueue = sweep.gateway.enqueue

    def slow_enqueue(searched, attrs):  # type: ignore[no-untyped-def]
        writing.set()
        go_on.wait(10)
        got = real_enqueue(searched, attrs)
        order.append("journal written")
        return got

    real_release = RunDirLock.release

    def release(self):  # type: ignore[no-untyped-def]
        order.append("run dir released")
        real_release(self)

    monkeypatch.setattr(sweep.gateway, "enqueue", slow_enqueue)
    monkeypatch.setattr(RunDirLock, "release", release)
    enq = threading.Thread(target=lambda: sweep.enqueue({"learning_rate": 1e-3}))
    enq.start()
    assert writing.wait(10)
    stopper = threading.Thread(target=sweep.stop)
    stopper.start()
    stopper.join(0.5)
    go_on.set()
    stopper.join(10)
    enq.join(10)
    assert order == ["journal written", "run dir released"]
    assert sweep.wait(2), "the enqueue's mark_finished(False) after stop() must not reopen the sweep"
    # Queued, or asked just as the scheduler stopped (never launched): either way the next resume runs it.
    assert sweep.trial(1).state in ("waiting", "interrupted") and sweep.backend.built == [(20, 0)]


def test_a_trial_whose_thread_cannot_start_fails_with_the_reason_and_the_sweep_goes_on(fake_sweep, monkeypatch):
    real_start = threading.Thread.start
    refused: list[str] = []

    def start(self):  # type: ignore[no-untyped-def]
        if self.name == "trial-0" and not refused:
            refused.append(self.name)
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    sweep = fake_sweep(params={"max_steps": 20}, study={"n_trials": 2, "concurrency": 1}).start()
    assert sweep.wait(30), "a trial left STARTING would hang wait()"
    assert [t.state for t in sweep.trials()] == ["failed", "complete"]
    assert sweep.trial(0).error == "could not start its thread: RuntimeError: can't start new thread"
    t0 = sweep.study.trials[0]
    assert t0.state == OptunaState.FAIL and "can't start new thread" in t0.user_attrs["error"]


def test_a_trial_asked_while_stop_times_out_is_never_launched(fake_sweep, monkeypatch):
    backend = FakeBackend()
    sweep = fake_sweep(backend=backend, params={"max_steps": 20}, study={"n_trials": 1, "concurrency": 1})
    asking, go_on = threading.Event(), threading.Event()
    real_ask = sweep.gateway.ask

    def slow_ask(budget):  # type: ignore[no-untyped-def]
        got = real_ask(budget)
        asking.set()
        go_on.wait(10)  # a slow sampler: stop()'s join of the scheduler times out meanwhile
        return got

    monkeypatch.setattr(sweep.gateway, "ask", slow_ask)
    sweep.start()
    assert asking.wait(10)
    sweep.stop(timeout=0.2)
    assert sweep._lock is not None and sweep._lock._fd is not None  # the scheduler lives on: the run is kept
    go_on.set()
    wait_for(lambda: not sweep.scheduler.alive, timeout=10, what="the scheduler to end")
    assert backend.built == [] and sweep.trial(0).state == "interrupted"
    assert sweep.study.trials[0].state == OptunaState.RUNNING  # resume starts it
    sweep._lock.release()
    again = _reopen(sweep.run_dir).start()
    try:
        assert again.wait(30) and again.trial(0).state == "complete"
    finally:
        again.stop()


def test_a_stop_during_start_is_never_undone(fake_sweep, monkeypatch):
    from tui_tuner.engine.sweep import Sweep

    seen: list[bool] = []

    class Spy(Sweep):
        @property  # type: ignore[override]
        def _stopping(self) -> bool:
            return self.__dict__.get("_stopping_v", False)

        @_stopping.setter
        def _stopping(self, v: bool) -> None:
            seen.append(v)
            self.__dict__["_stopping_v"] = v

    backend = FakeBackend()
    sweep = fake_sweep(backend=backend, params=LONG)
    real_open = sweep.gateway.open

    def open_then_stop(max_resource):  # type: ignore[no-untyped-def]
        real_open(max_resource)
        sweep.stop()  # returns at once: start() is still opening the study and carries the stop out

    monkeypatch.setattr(sweep.gateway, "open", open_then_stop)
    sweep.__class__ = Spy
    seen.clear()
    sweep.start()
    assert seen and all(seen), f"once stopped, the sweep must never read as not stopping: {seen}"
    assert sweep.wait(1) and sweep.trials() == [] and backend.built == []
    assert [e.kind for e in sweep.events_since(0)].count("sweep_stopped") == 1


def test_a_stop_during_a_legacy_continuation_wins_and_start_returns(fake_sweep, monkeypatch, tmp_path):
    from tui_tuner.engine import sweep as sweep_mod
    from tui_tuner.engine.sweep import Sweep

    first = fake_sweep(params={"max_steps": 200}, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: first.trials() and first.trial(0).step > 3, what="stepping")
    first.stop()
    # As 0.1.0 left a stop: told PRUNED with interrupted_at_step (its absolute checkpoint path).
    t = first.study.trials[0]
    ckpt = first.run_dir / t.user_attrs["interrupted_checkpoint"]
    first.study._storage.set_trial_user_attr(t._trial_id, "interrupted_checkpoint", str(ckpt))
    first.study._storage.set_trial_state_values(t._trial_id, OptunaState.PRUNED)
    again = Sweep.open(first.run_dir, backend=FakeBackend())
    real_stage = sweep_mod._stage_tree

    def stage_then_stop(src, root):  # type: ignore[no-untyped-def]
        got = real_stage(src, root)
        threading.Thread(target=again.stop).start()  # a signal arrives mid-continuation
        wait_for(lambda: again.stopping, timeout=5, what="stopping")
        return got

    monkeypatch.setattr(sweep_mod, "_stage_tree", stage_then_stop)
    again.start()  # must not raise
    wait_for(lambda: again.snapshot().phase == "stopped", timeout=10, what="stopped")
    assert again.wait(2) and len(again.study.trials) == 1  # the continuation was not written after the stop
    monkeypatch.setattr(sweep_mod, "_stage_tree", real_stage)
    third = _reopen(first.run_dir).start()
    try:
        assert third.wait(30)
        assert [(t.number, t.state) for t in third.trials()] == [(0, "interrupted"), (1, "complete")]
    finally:
        third.stop()


def test_a_queued_resume_never_undoes_a_later_pause(tmp_path):
    """pause, resume, pause in quick succession: the resume waits in the scheduler's queue (every slot taken) and
    is read after the second pause, once a slot has freed. The scheduler's thread is not started: the test reads
    its queue itself, so the order is exactly that."""
    from tui_tuner.engine.lifecycle import TrialState as S
    from tui_tuner.engine.sweep import Sweep
    from tui_tuner.engine.trial import TrialRun

    preset = Preset.from_dict(tiny_preset_dict(study={"concurrency": 1, "paused_frees_slot": True}))
    sweep = Sweep(preset, tmp_path / "run", backend=FakeBackend())
    runs = [TrialRun(number=n, trial=None, params=None, searched={}, overrides={}, trial_dir=tmp_path / str(n),
                     state=state) for n, state in ((0, S.PAUSED), (1, S.RUNNING))]
    for r in runs:
        sweep.registry.add(r)
    runs[0].control.pause()
    sweep.resume_trial(0)  # every slot is taken: queued
    sweep.pause(0)  # the user changes their mind at once
    runs[1].state = S.COMPLETE  # a slot frees before the scheduler reads its queue
    sch = sweep.scheduler
    while not sch._q.empty():
        sch._apply(sch._q.get_nowait())
    assert runs[0].control.paused, "the resume asked before the latest pause must not win"
    sweep.resume_trial(0)  # a resume asked after it still works
    assert not runs[0].control.paused
