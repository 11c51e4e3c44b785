"""Multi-fidelity promotion: the decision (no torch), the sampler's view of parked trials, and sweeps on the fake
backend (promoted trials continue under their numbers from step t1; a stop and resume keeps them parked)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import tiny_preset_dict, wait_for
from tui_tuner.engine.promotion import Promotion, Rung
from tui_tuner.engine.sampler_view import ViewSampler, parked_at_rung
from tui_tuner.preset import Preset, PresetError

GRID = {"learning_rate": {"type": "categorical", "choices": [1e-4, 1e-3, 3e-3, 8e-3]}}
STUDY = {"strategy": "promote", "n_trials": 4, "concurrency": 2, "sampler": "grid"}


def promote_preset(**sections: Any) -> Preset:
    base: dict[str, Any] = {"study": STUDY, "search": GRID, "promote": {"t1": 20, "top_k": 2},
                            "params": {"max_steps": 60}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if k != "search" else v
    return Preset.from_dict(tiny_preset_dict(**base))


def test_the_top_k_of_every_trial_at_the_rung_continue_and_the_parked_rest_are_dropped() -> None:
    promo = Promotion(promote_preset())
    d = promo.decide([Rung(0, 0.9, True), Rung(1, 0.4, True), Rung(2, 0.6, True), Rung(3, 0.6, True)])
    assert d.promote == [1, 2] and d.drop == [(3, 3), (0, 4)] and d.ranked == 4  # a tie goes to the lower number
    # A resume that redoes a decision cut short: trial 1 was promoted before, so only one more continues.
    d = promo.decide([Rung(0, 0.9, True), Rung(1, 0.4, False), Rung(2, 0.6, True), Rung(3, math.nan, True)])
    assert d.promote == [2] and d.drop == [(0, 3), (3, 0)]


@pytest.mark.parametrize(("sections", "match"), [
    ({"promote": {"top_k": 4}}, "promote.top_k: 4 is not fewer than the 4 configurations"),
    ({"promote": {"t1": 60}}, "promote.t1: must be below a fixed params.max_steps"),
    ({"promote": {"configs": 5}}, "promote.configs: 5 but study.n_trials is 4"),
])
def test_promotion_settings_that_cannot_work_are_one_line_errors(sections: dict[str, Any], match: str) -> None:
    with pytest.raises(PresetError, match=match):
        promote_preset(**sections)


def test_a_missing_promote_section_is_named() -> None:
    with pytest.raises(PresetError, match=r"needs a \[promote\] section"):
        Preset.from_dict(tiny_preset_dict(study={"strategy": "promote"}))


def test_the_sampler_sees_parked_trials_as_complete_at_their_rung_eval() -> None:
    seen: list[list[float]] = []

    class Spy(optuna.samplers.RandomSampler):
        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            seen.append([t.value for t in study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))])
            return super().sample_independent(study, trial, name, dist)

    study = optuna.create_study(sampler=ViewSampler(Spy(seed=0), parked_at_rung("rung_eval")))
    for value in (0.7, 0.3):
        t = study.ask()
        t.suggest_float("x", 0, 1)
        t.set_user_attr("rung_eval", value)  # parked: RUNNING in the study
    study.ask().suggest_float("x", 0, 1)
    assert seen[-1] == [0.7, 0.3]
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 3  # the study itself is unchanged


def _events(sweep: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(sweep.layout.events).read_text().splitlines()]


def _first_steps(sweep: Any, n: int) -> list[int]:
    rows = (sweep.layout.trial(n) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(r)["step"] for r in rows if "loss" in json.loads(r)]


def test_promoted_trials_continue_under_their_numbers_from_t1(fake_sweep: Any) -> None:
    """With the median pruner on (it may stop trials before the rung, never a promoted one after it: one at a
    time, the second promoted trial trails the first, complete, one at every step)."""
    from tests.fake_backend import FakeBackend

    backend = FakeBackend()
    study = {**STUDY, "concurrency": 1, "pruner": "median", "pruner_startup_trials": 0}
    sweep = fake_sweep(backend=backend, study=study, search=GRID, promote={"t1": 20, "top_k": 2},
                       params={"max_steps": 60}).start()
    assert sweep.wait(60)
    by_lr = sorted(sweep.trials(), key=lambda t: -t.params["learning_rate"])  # the fake's loss falls with lr
    promoted, dropped = by_lr[:2], by_lr[2:]
    assert [t.state for t in promoted] == ["complete"] * 2 and all(t.step == 60 for t in promoted)
    assert [t.state for t in dropped] == ["pruned"] * 2 and all(t.step == 20 for t in dropped)
    assert len(sweep.trials()) == 4  # no new trial: each promoted one kept its number
    for t in promoted:
        steps = _first_steps(sweep, t.number)
        assert steps == list(range(1, 61))  # one curve, continued at 21: not restarted
        assert t.user_attrs["promoted"] is True and t.user_attrs["rung_eval"] > t.eval_loss
    assert sorted(backend.built) == [(60, 0)] * 4 + [(60, 20)] * 2  # the two continuations restored step 20
    with sweep.study_lock:
        stored = {t.number: t for t in sweep.study.get_trials(deepcopy=False)}
    for t in dropped:
        a = stored[t.number].user_attrs
        assert stored[t.number].state == TrialState.PRUNED and a["pruned_reason"].startswith("not promoted: rank")
        assert stored[t.number].intermediate_values[20] == a["rung_eval"]  # TPE ranks it by its rung eval
    kinds = [e["event"] for e in _events(sweep)]
    assert kinds.count("parked") == 4 and kinds.count("promoted") == 2 and kinds.count("promotion") == 1


def test_a_stop_keeps_parked_trials_parked_and_resume_decides_once_the_rung_is_complete(
        fake_sweep: Any, tmp_path: Path) -> None:
    from tests.fake_backend import FakeBackend
    from tui_tuner.engine.sweep import Sweep

    run_dir = tmp_path / "promote-resume"
    study = {**STUDY, "n_trials": 3, "concurrency": 1}
    search = {"learning_rate": {"type": "categorical", "choices": [1e-4, 1e-3, 8e-3]}}
    backend = FakeBackend(step_s=0.01)
    sweep = fake_sweep(run_dir, backend=backend, study=study, search=search, promote={"t1": 10, "top_k": 1},
                       params={"max_steps": 40}).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].state == "parked", what="trial 0 parked")
    wait_for(lambda: len(sweep.trials()) > 1 and sweep.trials()[1].step >= 3, what="trial 1 training")
    sweep.stop()
    again = Sweep.open(run_dir, backend=FakeBackend())
    try:
        again.start()
        assert again.trial(0).state == "parked"
        assert again.wait(60)
        states = sorted(t.state for t in again.trials())
        assert states == ["complete", "pruned", "pruned"] and len(again.trials()) == 3
        best = max(again.trials(), key=lambda t: t.params["learning_rate"])
        assert best.state == "complete" and best.step == 40
    finally:
        again.stop()


def test_killing_a_parked_trial_ends_it_killed(fake_sweep: Any) -> None:
    sweep = fake_sweep(study={**STUDY, "concurrency": 1}, search=GRID, promote={"t1": 10, "top_k": 1},
                       params={"max_steps": 200}).start()
    wait_for(lambda: sweep.trials() and sweep.trials()[0].state == "parked", what="trial 0 parked")
    sweep.kill(0)
    wait_for(lambda: sweep.trial(0).state == "killed", what="the kill")
    with sweep.study_lock:
        t = sweep.study.get_trials(deepcopy=False)[0]
    assert t.state == TrialState.PRUNED and t.user_attrs["stopped_by_user"] is True
