"""Population-based training: the exploit/explore decisions (no torch), the preset rules, and PBT sweeps on the fake
backend and on the real tiny model (a clone's loss continues its donor's curve)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_preset_dict, wait_for
from tui_tuner.engine.pbt import Member, Pbt, quantile_size
from tui_tuner.preset import Preset, PresetError

GRID = {"learning_rate": {"type": "categorical", "choices": [1e-5, 1e-3, 3e-3, 8e-3]}}


def pbt_preset(**sections: Any) -> Preset:
    base = {"study": {"strategy": "pbt", "n_trials": 4, "concurrency": 4, "sampler": "grid"}, "search": GRID,
            "pbt": {"interval": 10}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v} if k != "search" else v
    return Preset.from_dict(tiny_preset_dict(**base))


# -- decisions ------------------------------------------------------------------------------------
def test_quantile_sizes_follow_ray_tune() -> None:
    assert [quantile_size(n, 0.25) for n in (1, 2, 3, 4, 5, 8)] == [0, 1, 1, 1, 2, 2]
    assert quantile_size(3, 0.5) == 1 and quantile_size(4, 0.5) == 2


def test_the_bottom_member_clones_an_active_top_member_and_the_others_train_on() -> None:
    pbt = Pbt(pbt_preset())
    members = [Member(0, 0.5, True), Member(1, 0.9, True), Member(2, 0.7, True), Member(3, 1.4, True)]
    d = pbt.decide(3, 20, members)
    assert d is not None
    assert (d.loser, d.donor, d.step, d.loser_score, d.donor_score, d.ranked) == (3, 0, 20, 1.4, 0.5, 4)
    assert all(pbt.decide(n, 20, members) is None for n in (0, 1, 2))
    # A donor that cannot be cloned now (finished, or no checkpoint at the step yet) is passed over.
    assert pbt.decide(3, 20, [Member(0, 0.5, False), *members[1:]]) is None
    # Members that have not reached the step (no score) are not ranked: alone, nobody is bottom.
    assert pbt.decide(3, 20, [Member(0, None, True), Member(3, 1.4, True)]) is None


def test_explore_perturbs_within_the_search_range_and_on_its_grid() -> None:
    search = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
              "warmup_steps": {"type": "int", "low": 0, "high": 30, "step": 10},
              "lora_dropout": {"type": "categorical", "choices": [0.0, 0.05, 0.1]}}
    random_sampler = {"sampler": "random"}
    pbt = Pbt(pbt_preset(search=search, study=random_sampler, pbt={"resample_probability": 0.0, "perturb": [1.2]}))
    out = pbt.explore({"learning_rate": 1e-3, "warmup_steps": 10, "lora_dropout": 0.05})
    assert out["learning_rate"] == pytest.approx(1.2e-3)
    assert out["warmup_steps"] == 20  # 12 put back on the step grid
    assert out["lora_dropout"] in (0.0, 0.1)  # a neighbouring choice
    assert pbt.explore({"learning_rate": 9.9e-3, "warmup_steps": 30, "lora_dropout": 0.1})["learning_rate"] == 1e-2
    always = Pbt(pbt_preset(search=search, study=random_sampler, pbt={"resample_probability": 1.0}))
    for _ in range(50):
        v = always.explore({"learning_rate": 1e-3, "warmup_steps": 10, "lora_dropout": 0.05})
        assert 1e-4 <= v["learning_rate"] <= 1e-2 and v["warmup_steps"] in (0, 10, 20, 30)


@pytest.mark.parametrize(("sections", "match"), [
    ({"pbt": {"population": 3}}, "pbt.population: 3 but study.n_trials is 4"),
    ({"pbt": {"explore": ["weight_decay"]}}, "weight_decay is not searched"),
    ({"pbt": {"explore": ["lora_r"]}, "search": {**GRID, "lora_r": {"type": "categorical", "choices": [4, 8]}}},
     "lora_r cannot change mid-run"),
    ({"search": {"lora_r": {"type": "categorical", "choices": [4, 8]}}}, "nothing to explore"),
    ({"pbt": {"perturb": [0.8, -1.0]}}, "perturb factors must be > 0"),
])
def test_pbt_settings_that_cannot_work_are_one_line_errors(sections: dict[str, Any], match: str) -> None:
    with pytest.raises(PresetError, match=match):
        pbt_preset(**sections)


# -- sweeps ---------------------------------------------------------------------------------------
def _study_trials(sweep: Any) -> list[Any]:
    with sweep.study_lock:
        return sweep.study.get_trials(deepcopy=False)


def _check_lineage(sweep: Any, population: int) -> list[Any]:
    """Every clone names its donor, the member it replaced and what it changed; every replaced member is PRUNED
    and names its clone; the sampler started exactly the population."""
    trials = {t.number: t for t in _study_trials(sweep)}
    clones = [t for t in trials.values() if t.user_attrs.get("origin") == "pbt"]
    assert sum(t.user_attrs.get("origin") == "sampler" for t in trials.values()) == population
    for c in clones:
        a = c.user_attrs
        loser = trials[a["pbt_replaces"]]
        assert loser.state.name == "PRUNED" and loser.user_attrs["pbt_replaced_by"] == c.number
        assert "PBT: bottom of" in loser.user_attrs["pruned_reason"]
        assert a["fork_step"] >= a["pbt_step"]  # the donor's checkpoint at the boundary or later
        donor = trials[a["parent_trial"]]
        for name, (old, new) in a["pbt_changes"].items():
            assert c.params[name] == new and old != new
            assert old == donor.params[name]
    return clones


def test_a_pbt_sweep_replaces_the_bottom_and_pause_and_kill_still_work(fake_sweep: Any) -> None:
    from tests.fake_backend import FakeBackend

    backend = FakeBackend(step_s=0.004)
    sweep = fake_sweep(backend=backend, study={"strategy": "pbt", "n_trials": 4, "concurrency": 4, "sampler": "grid"},
                       search=GRID, pbt={"interval": 10, "quantile": 0.25}, params={"max_steps": 120}).start()
    wait_for(lambda: len([t for t in sweep.trials() if t.state == "running"]) == 4, what="the population running")
    best = max(sweep.trials(), key=lambda t: t.params["learning_rate"]).number  # the fake's loss falls with lr
    sweep.pause(best)
    wait_for(lambda: sweep.trial(best).state == "paused", what="pause")
    wait_for(lambda: any(t.origin == "pbt" for t in sweep.trials()), what="a PBT clone")
    victim = next(t.number for t in sweep.trials() if t.state == "running" and t.number != best)
    sweep.kill(victim)
    wait_for(lambda: sweep.trial(victim).state == "killed", what="kill")
    sweep.resume_trial(best)
    assert sweep.wait(60)
    assert sweep.trial(best).state == "complete" and sweep.trial(victim).state == "killed"
    clones = _check_lineage(sweep, population=4)
    assert clones and all(t.state in ("complete", "pruned", "killed") for t in sweep.trials())
    # Each clone was built from its donor's checkpoint (the fake records the step each build restored).
    restored = sorted(step for _, step in backend.built if step > 0)
    assert restored == sorted(c.user_attrs["fork_step"] for c in clones)
    events = [json.loads(line) for line in Path(sweep.layout.events).read_text().splitlines()]
    assert sum(e["event"] == "pbt_exploit" for e in events) == len(clones)


def _metric(run_dir: Path, n: int, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "trials" / str(n) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def test_a_clone_continues_its_donors_weights_with_the_explored_params(make_sweep: Any, tmp_path: Path) -> None:
    """On the real tiny model: the worst member's replacement starts from the best member's checkpoint, so its
    first loss continues the donor's curve (far below a fresh start), with the explored LR in effect."""
    run_dir = tmp_path / "pbt"
    sweep = make_sweep(run_dir, study={"strategy": "pbt", "n_trials": 3, "concurrency": 3, "sampler": "grid"},
                       search={"learning_rate": {"type": "categorical", "choices": [1e-6, 3e-3, 1e-2]}},
                       params={"max_steps": 40, "schedule": "constant", "warmup_steps": 0},
                       pbt={"interval": 20, "quantile": 0.34, "resample_probability": 0.0}).start()
    assert sweep.wait(240)
    clones = _check_lineage(sweep, population=3)
    assert clones, "the 1e-6 member is the bottom at step 20: it must be replaced"
    c = clones[0].user_attrs
    child, donor, start = clones[0].number, c["parent_trial"], c["fork_step"]
    loss = {n: _metric(run_dir, n, "loss") for n in (child, donor)}
    assert min(loss[child]) == start + 1  # its own steps only: it trained from the donor's checkpoint on
    fresh = min(v[1] for v in (_metric(run_dir, t.number, "loss") for t in sweep.trials() if t.origin == "sampler"))
    first = loss[child][start + 1]
    assert first < 0.8 * fresh  # not a restart: a fresh model's first loss is far higher
    assert math.isclose(first, loss[donor][start], rel_tol=0.25)  # it picks up where the donor was
    lr = _metric(run_dir, child, "lr")[start + 1]
    assert lr == pytest.approx(clones[0].params["learning_rate"]) != sweep.trial(donor).params["learning_rate"]
