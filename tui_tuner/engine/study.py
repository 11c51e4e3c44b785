"""Optuna plumbing: storage (journal file by default), sampler and pruner from the preset, the search space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from tui_tuner.params import TrialParams
from tui_tuner.preset import CategoricalDist, FloatDist, IntDist, Preset

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_storage(run_dir: Path, url: str | None, threads: int = 1) -> optuna.storages.BaseStorage:
    """JournalStorage on a file by default: ~5 ms per ask under 8 threads, where SQLite took ~100 ms. A URL is a
    database (PostgreSQL for several boxes) with a pool for `threads` trial threads."""
    if url:
        from tui_tuner.engine.storage_url import open_rdb

        return open_rdb(url, threads)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))


def make_sampler(preset: Preset, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """`seed_offset` (the number of trials already in the study) keeps a resumed sweep from replaying the
    proposals its seed made before."""
    s = preset.study
    seed = None if s.sampler_seed is None else s.sampler_seed + seed_offset
    startup = s.startup_trials
    match s.sampler:
        case "tpe":
            # constant_liar: concurrent asks see running trials as bad, so they spread out.
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
        case "random":
            return optuna.samplers.RandomSampler(seed=seed)
        case "grid":
            return _GridSampler(preset.grid_space(), seed=seed)
        case "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        case "cmaes":
            # Its own rule for pruned trials (their last eval), or it would re-propose pruned regions.
            return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, consider_pruned_trials=True)
    raise ValueError(s.sampler)


def make_pruner(preset: Preset, max_resource: int) -> optuna.pruners.BasePruner:
    s = preset.study
    if s.strategy == "pbt":  # PBT stops (replaces) members itself; a pruner would stop them on its own rules
        return optuna.pruners.NopPruner()
    match s.pruner:
        case "none":
            return optuna.pruners.NopPruner()
        case "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=s.pruner_startup_trials, n_warmup_steps=s.pruner_warmup_steps
            )
        case "successive_halving":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=s.min_resource or "auto", reduction_factor=s.reduction_factor
            )
        case "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=s.min_resource or 1, max_resource=max_resource, reduction_factor=s.reduction_factor
            )
    raise ValueError(s.pruner)


def suggest_params(trial: optuna.Trial, preset: Preset, overrides: dict[str, Any] | None = None) -> TrialParams:
    """The preset's fixed params, the searched ones suggested by Optuna, then per-trial overrides (forks)."""
    return trial_params(preset, sample_params(trial, preset), overrides)


def sample_params(trial: optuna.Trial, preset: Preset) -> dict[str, Any]:
    """The searched params, from the sampler: an error here is the sampler's (Optuna samples relative params
    lazily, inside the first suggest), not the params'."""
    return {name: _suggest(trial, name, d) for name, d in preset.search.items()}


def trial_params(preset: Preset, searched: dict[str, Any], overrides: dict[str, Any] | None) -> TrialParams:
    """The preset's fixed params, then the searched ones, then per-trial overrides; ValidationError if invalid."""
    return TrialParams.model_validate({**preset.params.model_dump(), **searched, **(overrides or {})})


def _suggest(trial: optuna.Trial, name: str, d: FloatDist | IntDist | CategoricalDist) -> Any:
    if isinstance(d, FloatDist):
        return trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
    if isinstance(d, IntDist):
        return trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
    return trial.suggest_categorical(name, d.choices)


class _GridSampler(optuna.samplers.GridSampler):
    """GridSampler calls study.stop() once the grid is covered, which raises outside optimize(); the
    scheduler's trial budget ends the sweep instead."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        return None
