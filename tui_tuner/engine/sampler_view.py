"""A sampler wrapper that shows the inner sampler some trials as complete at a value of theirs: promotion's parked
trials (RUNNING in the study) at their rung eval, since its first rung is a short-budget study the sampler must
learn from while its trials wait; and, for a sampler that reads only COMPLETE trials (GP), pruned trials at their
last eval, or it never learns that a pruned region is bad and proposes it again and again."""

from __future__ import annotations

import copy
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

Shown = Callable[[FrozenTrial], float | None]  # a trial's value to show as COMPLETE, or None: as it is


def parked_at_rung(attr: str) -> Shown:
    """A RUNNING trial carrying `attr` (promotion's rung eval) at that value."""
    return lambda t: t.user_attrs.get(attr) if t.state == TrialState.RUNNING else None


def pruned_at_last_eval(t: FrozenTrial) -> float | None:
    """A pruned trial at its last reported eval (as CMA-ES's consider_pruned_trials does): worse than it would have
    ended, which is what the pruner judged."""
    if t.state != TrialState.PRUNED or not t.intermediate_values:
        return None
    return t.intermediate_values[max(t.intermediate_values)]


def first_shown(*shown: Shown) -> Shown:
    """The first of several rules that gives a value."""
    return lambda t: next((v for rule in shown if (v := rule(t)) is not None), None)


class _StudyView:
    """The study, but its trial lists pass through `shown` (samplers read trials only through these)."""

    def __init__(self, study: optuna.Study, shown: Shown):
        self._study = study
        self._shown = shown

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _view(self, states: Container[TrialState] | None) -> list[FrozenTrial]:
        out = []
        for t in self._study._get_trials(deepcopy=False, states=None, use_cache=False):
            value = self._shown(t)
            if value is not None:
                t = copy.copy(t)
                t.state, t.values = TrialState.COMPLETE, [value]
            if states is None or t.state in states:
                out.append(t)
        return out

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._view(states)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        return self._view(states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self._view(None)


class ViewSampler(optuna.samplers.BaseSampler):
    """Delegates every call to `inner`; the sampling calls see the study through _StudyView."""

    def __init__(self, inner: optuna.samplers.BaseSampler, shown: Shown):
        self.inner = inner
        self._shown = shown

    def _study(self, study: optuna.Study) -> Any:
        return _StudyView(study, self._shown)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._study(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(self._study(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(self._study(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
