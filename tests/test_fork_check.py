"""A fork checked without acting (the fork dialog's preview): the same refusals as fork, the child's LR from the
fork step, nothing written; refused forks and enqueues in the event log; a queued trial's known LR plan."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import wait_for

from tui_tuner.api.client import CommandError, RemoteSweep
from tui_tuner.api.wire import fork_plan_from_wire, fork_plan_to_wire
from tui_tuner.engine.errors import SweepError
from tui_tuner.engine.sweep import Sweep
from tui_tuner.params import TrialParams
from tui_tuner.training.schedules import lr_factor

PARAMS = {"max_steps": 100_000, "schedule": "cosine", "warmup_steps": 0}


@pytest.fixture
def live(fake_sweep: Callable[..., Sweep]) -> Sweep:
    sweep = fake_sweep(params=PARAMS, study={"n_trials": 2, "concurrency": 2}).start()
    wait_for(lambda: all(t.state == "running" and t.checkpoints for t in sweep.trials()) and len(sweep.trials()) == 2,
             what="two trials running with a checkpoint")
    return sweep


def _counts(sweep: Sweep) -> tuple[int, int, int]:
    return len(sweep.trials()), len(sweep.trial(0).checkpoints), len(sweep.events_since(0))


def test_check_fork_plans_the_child_from_the_fork_step_and_acts_on_nothing(live: Sweep) -> None:
    first = live.trial(0).checkpoints[0].step
    live.pause(0)  # held still: its step, checkpoints and events stay put while we compare
    wait_for(lambda: live.trial(0).state == "paused", what="pause")
    before = _counts(live)
    plan = live.check_fork(0, step=first, params={"learning_rate": 2e-3, "max_steps": 1000}, points=50)
    assert (plan.step, plan.now, plan.total_steps, plan.peak_lr) == (first, False, 1000, 2e-3)
    child = TrialParams.model_validate({**live.preset.params.model_dump(), **live.trial(0).params,
                                        "learning_rate": 2e-3, "max_steps": 1000})
    assert plan.plan[0] == (first, 2e-3 * lr_factor(first, child, 1000))  # the schedule at the fork step...
    assert plan.start_lr is not None and plan.start_lr < plan.peak_lr  # ...is not the peak that was typed
    assert plan.plan[-1][0] == 999 and all(s >= first for s, _ in plan.plan)
    now = live.check_fork(0)
    assert now.now and now.step == live.trial(0).step
    assert _counts(live) == before  # no trial, no checkpoint written, no event


@pytest.mark.parametrize(("step", "params", "says"), [
    (None, {"lora_r": 64}, "cannot change lora_r"),
    (None, {"optimizer": "sgd", "learning_rate": 1e-3}, "cannot change optimizer"),
    (None, {"optimizer": "adam"}, "the parent's optimizer state would not fit"),
    (7, {}, "no checkpoint at step 7"),
    (None, {"max_steps": 1}, "already at the trial's end"),
    (None, {"learning_rate": -1.0}, "learning_rate"),
    (None, {"nope": 1}, "unknown hyperparameter"),
])
def test_check_fork_refuses_what_fork_refuses_and_only_fork_says_so_in_events(
        live: Sweep, serve: Callable[..., RemoteSweep], step: int | None, params: dict, says: str) -> None:
    remote = serve(live)
    live.pause(0)  # held at one step: the check and the fork see the same trial
    wait_for(lambda: live.trial(0).state == "paused", what="pause")
    with pytest.raises(SweepError, match=says) as checked:
        live.check_fork(0, step=step, params=params)
    with pytest.raises(CommandError, match=says):
        remote.check_fork(0, step=step, params=params)
    assert not [e for e in live.events_since(0) if e.kind == "refused"]  # a check is not a command
    with pytest.raises(SweepError) as forked:
        live.fork(0, step=step, params=params)
    assert str(forked.value) == str(checked.value)
    refused = [e for e in live.events_since(0) if e.kind == "refused"]
    assert len(refused) == 1 and refused[0].trial == 0
    assert refused[0].message.startswith("fork of trial 0 refused: ") and says in refused[0].message
    assert len(live.trials()) == 2


def test_a_refused_enqueue_is_an_event_too(live: Sweep) -> None:
    with pytest.raises(SweepError, match="learning_rate"):
        live.enqueue({"learning_rate": 0})
    (ev,) = [e for e in live.events_since(0) if e.kind == "refused"]
    assert ev.message.startswith("new trial refused: learning_rate") and ev.trial is None


def test_the_plan_crosses_the_wire_as_itself(live: Sweep, serve: Callable[..., RemoteSweep]) -> None:
    step = live.trial(1).checkpoints[0].step
    plan = live.check_fork(1, step=step, params={"schedule": "wsd", "max_steps": 500}, points=20)
    assert fork_plan_from_wire(fork_plan_to_wire(plan)) == plan
    assert serve(live).check_fork(1, step=step, params={"schedule": "wsd", "max_steps": 500}, points=20) == plan


def test_a_queued_trial_has_its_lr_plan_once_nothing_is_left_to_sample(fake_sweep: Callable[..., Sweep]) -> None:
    sweep = fake_sweep(params=PARAMS, study={"n_trials": 1, "concurrency": 1}).start()
    wait_for(lambda: bool(sweep.trials()) and bool(sweep.trial(0).checkpoints), what="a checkpoint")
    sweep.pause(0)  # holds the only slot: what is queued below stays queued
    child = sweep.fork(0, params={"learning_rate": 4e-3, "max_steps": 200_000})
    named = sweep.enqueue({"learning_rate": 1e-3, "max_steps": 300})
    unnamed = sweep.enqueue({"max_steps": 300})  # learning_rate is searched: the sampler draws it at start
    assert {sweep.trial(n).state for n in (child, named, unnamed)} == {"waiting"}
    plan = sweep.lr_plan(child, 50)
    assert plan[0][0] == 0 and plan[-1][0] == 199_999 and max(lr for _, lr in plan) == pytest.approx(4e-3)
    assert sweep.lr_plan(named, 50)[0] == (0, 1e-3)
    assert sweep.lr_plan(unnamed, 50) == []
