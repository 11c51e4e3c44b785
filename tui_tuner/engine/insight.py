"""Builds what the Insight view shows (snapshot.Insight): each searched param's importance and its trials' points."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from tui_tuner.engine.snapshot import METHOD, Insight, InsightPoint, ParamInsight
from tui_tuner.engine.study_gateway import state_of
from tui_tuner.format import error_line
from tui_tuner.preset import CategoricalDist, FloatDist, IntDist

MIN_COMPLETE = 2  # Optuna's importance evaluators tell nothing from fewer complete trials

Importances = Callable[[list[FrozenTrial], list[str]], dict[str, float]]


def finished(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials with an objective to show: complete ones with a finite value, pruned ones that reported."""
    return [t for t in trials if _objective(t) is not None]


def build(trials: Sequence[FrozenTrial], search: Mapping[str, FloatDist | IntDist | CategoricalDist],
          importances: Importances) -> Insight:
    """The insight of these (finished) trials; `importances` is the gateway's evaluator (costly: call rarely)."""
    done = finished(trials)
    complete = [t for t in done if t.state == OptunaState.COMPLETE]
    names = list(search)
    reason = _why_not(len(complete), names)
    scores: dict[str, float] = {}
    if reason is None:
        try:
            scores = importances(complete, names)
        except Exception as e:  # a reason in the view, never a traceback in the UI
            reason = f"{METHOD} failed: {error_line(e)}"
    if reason is None and not any(scores.values()):
        reason = f"{METHOD}: the {len(complete)} complete trials do not tell the params apart yet"
        scores = {}
    total = sum(scores.values())
    params = [ParamInsight(
        name=name, importance=scores[name] / total if name in scores else None,
        log=bool(getattr(dist, "log", False)),
        choices=tuple(dist.choices) if isinstance(dist, CategoricalDist) else (),
        bounds=None if isinstance(dist, CategoricalDist) else (float(dist.low), float(dist.high)),
        points=tuple(_points(done, name))) for name, dist in search.items()]
    if scores:
        params.sort(key=lambda p: -(p.importance or 0.0))
    return Insight(finished=len(done), complete=len(complete), params=tuple(params), reason=reason)


def _why_not(complete: int, names: list[str]) -> str | None:
    if not names:
        return "nothing is searched: the preset has no [search] params"
    if len(names) == 1:
        return f"one searched param ({names[0]}): importance ranks params against each other"
    if complete < MIN_COMPLETE:
        return f"{METHOD} needs {MIN_COMPLETE} complete trials, {complete} so far"
    return None


def _objective(t: FrozenTrial) -> float | None:
    if t.state == OptunaState.COMPLETE:
        value = t.value
    elif t.state == OptunaState.PRUNED and t.intermediate_values:
        value = t.intermediate_values[max(t.intermediate_values)]  # where it stood when it was stopped
    else:
        return None
    return value if value is not None and math.isfinite(value) else None


def _points(trials: list[FrozenTrial], name: str) -> list[InsightPoint]:
    return [InsightPoint(trial=t.number, value=t.params[name], objective=_objective(t),  # type: ignore[arg-type]
                         state=str(state_of(t))) for t in trials if name in t.params]
