"""Insight (issue 14): PED-ANOVA importances and per-param points, from scripted studies, a fake-backend sweep
and over the control API; the reasons given instead of importances."""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
import pytest

from tui_tuner.engine.insight import build
from tui_tuner.engine.snapshot import Insight
from tui_tuner.engine.study_gateway import StudyGateway
from tui_tuner.preset import Preset

SEARCH = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
          "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
          "lora_r": {"type": "categorical", "choices": [2, 4, 8]}}


def _search(names: tuple[str, ...] = tuple(SEARCH)) -> Any:
    from tests.conftest import tiny_preset_dict

    return Preset.from_dict(tiny_preset_dict(search={k: SEARCH[k] for k in names})).search


def _study(n: int, prune_every: int = 0) -> optuna.Study:
    """learning_rate decides the objective; weight_decay and lora_r barely matter. Every prune_every-th trial is
    pruned after reporting 5.0 then 7.0 (its last intermediate value)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(t: optuna.Trial) -> float:
        lr = t.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        wd = t.suggest_float("weight_decay", 0.0, 0.1)
        t.suggest_categorical("lora_r", [2, 4, 8])
        if prune_every and t.number % prune_every == prune_every - 1:
            t.report(5.0, 1)
            t.report(7.0, 2)
            raise optuna.TrialPruned()
        return abs(math.log10(lr) + 2.5) + wd * 0.01

    study.optimize(objective, n_trials=n)
    return study


def test_importances_rank_the_param_that_decides_first_and_pruned_trials_show_at_their_last_value() -> None:
    study = _study(40, prune_every=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing warns: a warning would scribble over the TUI
        got = build(study.trials, _search(), StudyGateway.importances)
    assert got.reason is None and got.finished == 40 and got.complete == 30
    assert got.params[0].name == "learning_rate" and got.params[0].importance > 0.5
    assert math.isclose(sum(p.importance or 0 for p in got.params), 1.0)
    lr = got.params[0]
    assert lr.log and lr.bounds == (1e-4, 1e-2) and not lr.choices
    pruned = [p for p in lr.points if p.state == "pruned"]
    assert len(pruned) == 10 and {p.objective for p in pruned} == {7.0}
    assert next(p for p in got.params if p.name == "lora_r").choices == (2, 4, 8)


@pytest.mark.parametrize(("trials", "names", "reason"), [
    (1, tuple(SEARCH), "PED-ANOVA needs 2 complete trials, 1 so far"),
    (0, tuple(SEARCH), "PED-ANOVA needs 2 complete trials, 0 so far"),
    (10, ("learning_rate",), "one searched param (learning_rate): importance ranks params against each other"),
])
def test_too_few_trials_or_one_param_is_a_reason_not_an_error(trials: int, names: tuple[str, ...],
                                                               reason: str) -> None:
    got = build(_study(trials).trials if trials else [], _search(names), StudyGateway.importances)
    assert got.reason == reason
    assert all(p.importance is None for p in got.params)
    assert all(len(p.points) == trials for p in got.params)  # the scatter still shows what there is


def test_an_evaluator_failure_is_one_line() -> None:
    def broken(_trials: Any, _names: Any) -> dict[str, float]:
        raise ValueError("no good\nsecond line")

    got = build(_study(4).trials, _search(), broken)
    assert got.reason is not None and got.reason.startswith("PED-ANOVA failed: ") and "\n" not in got.reason


def test_sweep_insight_is_cached_until_a_trial_finishes_and_served_over_the_api(
        fake_sweep: Any, serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sweep = fake_sweep(search={k: SEARCH[k] for k in ("learning_rate", "weight_decay")},
                       params={"max_steps": 10, "eval_interval": 5},
                       study={"n_trials": 4, "concurrency": 2, "pruner": "none"}).start()
    remote = serve(sweep)
    assert sweep.wait(60)
    calls: list[int] = []
    real = StudyGateway.importances
    monkeypatch.setattr(sweep.gateway, "importances", lambda t, n: calls.append(len(t)) or real(t, n))
    first = sweep.insight()
    assert isinstance(first, Insight) and first.reason is None and first.complete == 4
    assert {p.name for p in first.params} == {"learning_rate", "weight_decay"}
    assert all(len(p.points) == 4 for p in first.params)
    assert sweep.insight() is first and calls == [4]  # no trial finished since: not evaluated again
    assert remote.insight() == first  # the attached client sees the same
    assert calls == [4]


def test_insight_while_loading_has_no_trials(fake_sweep: Any) -> None:
    sweep = fake_sweep()
    got = sweep.insight()  # the study is not open yet
    assert got.finished == 0 and got.reason == "one searched param (learning_rate): importance ranks params " \
                                               "against each other"
