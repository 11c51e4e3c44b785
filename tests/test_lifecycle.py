"""The trial lifecycle without torch: the transition table, and the engine driven by a fake trainer."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState as OptunaState

from tests.conftest import wait_for
from tests.fake_backend import FakeBackend
from tui_tuner.engine.lifecycle import EVENT_KINDS, FINISHED, TRANSITIONS, IllegalTransition, Lifecycle, TrialState

S = TrialState
LONG = {"max_steps": 100_000}


class _Rec:
    def __init__(self, state: TrialState):
        self.number, self.state, self.version, self.step = 7, state, 0, 3
        self.started_at = self.finished_at = None


def _lifecycle() -> tuple[Lifecycle, list[tuple[str, int | None]], list[int]]:
    lock = threading.Lock()
    emitted: list[tuple[str, int | None]] = []
    wakes: list[int] = []

    def emit(kind, trial, message, **data):  # type: ignore[no-untyped-def]
        assert not lock.locked(), "events are emitted after the registry lock is released"
        emitted.append((kind, trial))

    return Lifecycle(lock, emit, lambda: wakes.append(1)), emitted, wakes


@pytest.mark.parametrize(("frm", "to"), sorted(TRANSITIONS))
def test_every_legal_move_sets_the_state_bumps_the_version_wakes_and_emits_its_kind(frm, to):
    life, emitted, wakes = _lifecycle()
    rec = _Rec(frm)
    life.move(rec, to, "msg")
    assert (rec.state, rec.version, emitted, wakes) == (to, 1, [(TRANSITIONS[(frm, to)], 7)], [1])
    if to in FINISHED or to is S.INTERRUPTED:
        assert rec.finished_at is not None


ILLEGAL = [(a, b) for a in S for b in S if (a, b) not in TRANSITIONS]


@pytest.mark.parametrize(("frm", "to"), ILLEGAL)
def test_every_other_move_is_refused_and_changes_nothing(frm, to):
    life, emitted, wakes = _lifecycle()
    rec = _Rec(frm)
    with pytest.raises(IllegalTransition, match=f"trial 7: illegal move {frm} -> {to}"):
        life.move(rec, to, "msg")
    assert (rec.state, rec.version, emitted, wakes) == (frm, 0, [], [])


def test_the_table_has_the_shape_the_engine_relies_on():
    assert len(ILLEGAL) > 60  # the table is not "anything goes"
    assert not any(frm in FINISHED for frm, _ in TRANSITIONS)  # finished trials are immutable, as in Optuna
    assert {to for _, to in TRANSITIONS} | {S.WAITING} == set(S)  # every state is reachable
    assert (S.RUNNING, S.PRUNED) in TRANSITIONS and (S.INTERRUPTED, S.STARTING) in TRANSITIONS
    assert (S.WAITING, S.RUNNING) not in TRANSITIONS and (S.INTERRUPTED, S.RUNNING) not in TRANSITIONS
    assert {"interrupted", "killed", "cancelled", "resuming"} <= EVENT_KINDS


# -- the engine with a fake trainer ------------------------------------------------------------------
def _reopen(sweep, backend: FakeBackend | None = None):  # type: ignore[no-untyped-def]
    from tui_tuner.engine.sweep import Sweep

    return Sweep.open(sweep.run_dir, backend=backend or FakeBackend())


def _paths(sweep) -> dict[int, list[str]]:  # type: ignore[no-untyped-def]
    """Per trial, the kinds of its state events, in order."""
    out: dict[int, list[str]] = {}
    for e in sweep.events_since(0):
        if e.kind in EVENT_KINDS and e.trial is not None:
            out.setdefault(e.trial, []).append(e.kind)
    return out


def test_a_sweep_moves_each_trial_only_along_the_table(fake_sweep):
    sweep = fake_sweep(params={"max_steps": 60}, study={"n_trials": 3, "concurrency": 2}).start()
    wait_for(lambda: len(sweep.trials()) >= 1 and sweep.trial(0).step >= 5, what="trial 0 stepping")
    sweep.pause(0)
    wait_for(lambda: sweep.trial(0).state == "paused", what="paused")
    sweep.resume_trial(0)
    assert sweep.wait(60)
    paths = _paths(sweep)
    assert paths[0] == ["starting", "started", "paused", "resumed", "complete"]
    assert paths[1] == paths[2] == ["starting", "started", "complete"]
    assert [t.state for t in sweep.trials()] == ["complete"] * 3


def test_kill_of_a_waiting_trial_cancels_it_and_the_sampler_never_sees_it(fake_sweep):
    sweep = fake_sweep(params=LONG, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).state == "running", what="trial 0 running")
    n = sweep.enqueue({"learning_rate": 1e-3})
    assert sweep.trial(n).state == "waiting"
    sweep.kill(n)
    wait_for(lambda: sweep.trial(n).state == "cancelled", what="cancelled")
    t = sweep.study.trials[n]
    assert t.state == OptunaState.FAIL and t.user_attrs["cancelled_by_user"] is True
    assert not (sweep.run_dir / "trials" / str(n) / "metrics.jsonl").exists()  # it never ran
    assert _paths(sweep)[n] == ["cancelled"]
    assert sweep.trial(0).state == "running"  # the running one is untouched
    from tui_tuner.engine.sweep import SweepError

    with pytest.raises(SweepError, match="is cancelled, not running or paused"):
        sweep.kill(n)


def test_stop_then_resume_keeps_numbers_pauses_and_concurrency(fake_sweep):
    sweep = fake_sweep(params={"max_steps": 400}, study={"n_trials": 2, "concurrency": 2}).start()
    wait_for(lambda: len(sweep.trials()) == 2 and all(t.step >= 3 for t in sweep.trials()), what="2 stepping")
    sweep.pause(1)
    wait_for(lambda: sweep.trial(1).state == "paused", what="paused")
    sweep.set_concurrency(3)
    wait_for(lambda: any(e.kind == "concurrency" for e in sweep.events_since(0)), what="concurrency applied")
    sweep.stop()
    at_stop = {t.number: t.step for t in sweep.trials()}
    assert [t.state for t in sweep.trials()] == ["interrupted", "interrupted"]
    assert [t.state for t in sweep.study.trials] == [OptunaState.RUNNING, OptunaState.RUNNING]

    backend = FakeBackend()
    again = _reopen(sweep, backend).start()
    wait_for(lambda: again.trial(1).state == "paused" and again.trial(0).state == "running", what="restored")
    assert again.concurrency == 3 and again.snapshot().concurrency == 3
    assert sorted(backend.built) == sorted((400, at_stop[n]) for n in (0, 1))  # from their stop checkpoints
    assert again.trial(1).step == at_stop[1]  # paused means paused: not a step further
    again.resume_trial(1)
    assert again.wait(60)
    assert [(t.number, t.state, t.step) for t in again.trials()] == [(0, "complete", 400), (1, "complete", 400)]
    assert len(again.study.trials) == 2  # no new numbers: the budget of 2 was spent once
    assert _paths(again)[1][-4:] == ["resuming", "paused", "resumed", "complete"]


def test_the_resume_hint_is_given_when_work_is_left_and_only_then(fake_sweep, tmp_path):
    from tui_tuner.report import where_next

    done = fake_sweep(tmp_path / "done", params={"max_steps": 20}).start()
    assert done.wait(30)
    assert not done.resumable and "continue with" not in where_next(done)
    done.stop()  # stopping a finished sweep leaves nothing to resume either
    assert not done.resumable
    stopped = fake_sweep(tmp_path / "stopped", params=LONG).start()
    wait_for(lambda: stopped.trials() and stopped.trial(0).step > 2, what="stepping")
    stopped.stop()
    assert stopped.resumable
    assert where_next(stopped) == (f"run directory: {stopped.run_dir}  (continue with: tui-tuner resume "
                                   f"{stopped.run_dir})")


def test_events_after_a_resume_include_the_runs_earlier_ones_numbered_on(fake_sweep):
    sweep = fake_sweep(params={"max_steps": 200}, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step >= 3, what="stepping")
    sweep.stop()
    before = [(e.kind, e.message) for e in sweep.events_since(0)]
    again = _reopen(sweep).start()
    evs = again.events_since(0)
    assert [(e.kind, e.message) for e in evs[:len(before)]] == before
    assert all(e.earlier for e in evs[:len(before)]) and not any(e.earlier for e in evs[len(before):])
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))


def test_the_engine_and_a_fake_sweep_never_import_torch(tmp_path):
    code = f"""
import sys
from tests.conftest import tiny_preset_dict
from tests.fake_backend import FakeBackend
from tui_tuner.engine.sweep import Sweep
from tui_tuner.preset import Preset
s = Sweep(Preset.from_dict(tiny_preset_dict(params={{"max_steps": 30}})), {str(tmp_path / "r")!r},
          backend=FakeBackend()).start()
assert s.wait(60)
s.stop()
again = Sweep.open({str(tmp_path / "r")!r}, backend=FakeBackend()).start()
assert again.wait(60)
again.stop()
assert [t.state for t in again.trials()] == ["complete", "complete"], again.trials()
heavy = [m for m in ("torch", "transformers", "peft") if m in sys.modules]
assert not heavy, heavy
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent, timeout=120)


def test_cancelled_trials_are_fail_for_samplers():
    """Why cancelled is FAIL: Optuna's samplers learn from COMPLETE and PRUNED trials only."""
    study = optuna.create_study()
    study.enqueue_trial({"x": 1.0})
    t = study.trials[0]
    study._storage.set_trial_state_values(t._trial_id, OptunaState.FAIL)
    assert study.get_trials(states=(OptunaState.COMPLETE, OptunaState.PRUNED)) == []
    assert study.ask({"x": optuna.distributions.FloatDistribution(0, 2)}).number == 1  # the queue moved on


def test_a_stop_while_the_sweep_loads_returns_at_once_and_nothing_starts(fake_sweep):
    class SlowPrepare(FakeBackend):
        def __init__(self) -> None:
            super().__init__()
            self.release = threading.Event()

        def prepare(self, preset):  # type: ignore[no-untyped-def]
            self.release.wait(30)
            return super().prepare(preset)

    backend = SlowPrepare()
    sweep = fake_sweep(backend=backend, params=LONG)
    starter = threading.Thread(target=sweep.start)
    starter.start()
    assert sweep.snapshot().phase == "loading" and "loading model" in (sweep.snapshot().loading or "")
    sweep.stop()  # does not wait for the model
    assert starter.is_alive()
    backend.release.set()
    starter.join(30)
    assert sweep.wait(1) and sweep.trials() == [] and sweep.snapshot().phase == "stopped"
    assert not sweep.run_dir.exists()  # stopped before anything was written


def test_headless_never_waits_forever_on_trials_it_cannot_resume(fake_sweep, capsys):
    import io

    from tui_tuner.engine.sweep import Sweep
    from tui_tuner.headless import run_headless

    sweep = fake_sweep(params={"max_steps": 300}, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 2, what="stepping")
    sweep.pause(0)
    wait_for(lambda: sweep.trial(0).state == "paused", what="paused")
    sweep.stop()  # (a kill -9 while paused leaves the same `paused` attr)
    again = Sweep.open(sweep.run_dir, backend=FakeBackend()).start()
    assert run_headless(again, out=io.StringIO()) == 1
    err = capsys.readouterr().err
    assert "only paused trials are left (#0)" in err and "--resume-paused" in err
    assert again.trial(0).state == "interrupted"  # stopped, still to be resumed: nothing lost
    third = Sweep.open(sweep.run_dir, backend=FakeBackend(), resume_paused=True).start()
    assert run_headless(third, out=io.StringIO()) == 0
    assert third.trial(0).state == "complete" and third.trial(0).step == 300


def test_headless_with_clients_waits_for_a_resume_and_says_how(fake_sweep):
    """An engine that serves its API (every CLI run) keeps paused trials for a client (`ctl resume`, attach)."""
    import io
    import threading

    from tui_tuner.headless import run_headless

    sweep = fake_sweep(params={"max_steps": 200}, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: sweep.trials() and sweep.trial(0).step > 2, what="stepping")
    sweep.pause(0)
    out, code = io.StringIO(), []
    t = threading.Thread(target=lambda: code.append(run_headless(sweep, summary_every=0.5, out=out, clients=True)))
    t.start()
    wait_for(lambda: "waiting for a client" in out.getvalue(), timeout=20, what="the paused notice")
    assert f"ctl {sweep.run_dir} resume 0" in out.getvalue() and t.is_alive()  # waiting, not stopped
    sweep.resume_trial(0)
    t.join(30)
    assert code == [0] and sweep.trial(0).state == "complete"


@pytest.mark.parametrize(("optuna_state", "attrs", "expected"), [
    (OptunaState.RUNNING, {"interrupted_at_step": 5}, "interrupted"),
    (OptunaState.RUNNING, {}, "interrupted"),  # left by a crash
    (OptunaState.PRUNED, {"interrupted_at_step": 5}, "interrupted"),  # 0.1.0's stop
    (OptunaState.PRUNED, {"interrupted_at_step": 5, "pruned_at_step": 50}, "pruned"),  # stopped, resumed, pruned
    (OptunaState.PRUNED, {"interrupted_at_step": 5, "stopped_by_user": True}, "killed"),
    (OptunaState.PRUNED, {"pruned_at_step": 50}, "pruned"),
    (OptunaState.FAIL, {"cancelled_by_user": True}, "cancelled"),
    (OptunaState.FAIL, {"error": "x"}, "failed"),
    (OptunaState.COMPLETE, {"interrupted_at_step": 5}, "complete"),
])
def test_the_stored_state_of_a_trial(optuna_state, attrs, expected):
    from tui_tuner.engine.study_gateway import state_of

    values = {"value": 1.0} if optuna_state == OptunaState.COMPLETE else {}
    t = optuna.trial.create_trial(state=optuna_state, user_attrs=attrs, **values)
    assert state_of(t) == expected


def test_a_command_while_the_sweep_loads_says_so(fake_sweep):
    from tui_tuner.engine.sweep import SweepError

    sweep = fake_sweep()  # not started: still loading
    for command in (sweep.pause, sweep.kill, sweep.resume_trial):
        with pytest.raises(SweepError, match="still loading"):
            command(0)
    sweep.start()
    with pytest.raises(SweepError, match="no trial 99"):
        sweep.pause(99)
