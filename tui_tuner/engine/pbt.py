"""Population-based training's two decisions, without torch: who exploits whom at a boundary, and what to explore."""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass
from typing import Any

from tui_tuner.preset import CategoricalDist, FloatDist, IntDist, Preset


@dataclass(frozen=True)
class Member:
    """One population member as PBT ranks it at a boundary step."""

    number: int
    score: float | None  # its own eval loss at the boundary (None: it has not reached it, or it was cloned past it)
    active: bool  # running or paused, with a checkpoint at the boundary or later: it can be cloned now


@dataclass(frozen=True)
class Exploit:
    """The bottom member `loser` clones `donor`; both scores are evals at step `step`."""

    loser: int
    donor: int
    step: int
    loser_score: float
    donor_score: float
    ranked: int  # members ranked at that step


def quantile_size(n: int, fraction: float) -> int:
    """Members in each of the bottom and top quantiles of `n` (Ray Tune's rule: ceil, at most half)."""
    return min(math.ceil(n * fraction), n // 2)


class Pbt:
    """Decisions of one sweep's PBT, made on the deciding member's own thread. `_lock` guards the RNG: members
    reach their boundaries on several threads at once."""

    def __init__(self, preset: Preset):
        self.preset = preset
        self.conf = preset.pbt
        self.explored = preset.pbt_explored()
        self._rng = random.Random(self.conf.seed)
        self._lock = threading.Lock()

    def is_boundary(self, step: int, total: int) -> bool:
        return step % self.conf.interval == 0 and step < total

    def decide(self, me: int, step: int, members: list[Member]) -> Exploit | None:
        """Member `me` at boundary `step`: the donor to clone when `me` is in the bottom quantile of the members
        that reached `step`, and an active member of the top quantile can be cloned; else None (it trains on)."""
        ranked = sorted((m for m in members if m.score is not None and math.isfinite(m.score)),
                        key=lambda m: (m.score, m.number))
        k = quantile_size(len(ranked), self.conf.quantile)
        if k == 0 or me not in {m.number for m in ranked[-k:]}:
            return None
        donors = [m for m in ranked[:k] if m.active and m.number != me]
        if not donors:
            return None
        with self._lock:
            donor = self._rng.choice(donors)
        mine = next(m for m in ranked if m.number == me)
        assert mine.score is not None and donor.score is not None
        return Exploit(me, donor.number, step, mine.score, donor.score, len(ranked))

    def explore(self, params: dict[str, Any]) -> dict[str, Any]:
        """New values for the explored params, from the donor's: resampled from the search range with
        `resample_probability`, else perturbed (a number times a factor, kept in range; a categorical moves to a
        neighbouring choice). Every explored param is in the result."""
        out: dict[str, Any] = {}
        with self._lock:
            for name in self.explored:
                out[name] = self._explore_one(name, params.get(name))
        return out

    def _explore_one(self, name: str, old: Any) -> Any:
        dist = self.preset.search[name]
        if old is None or self._rng.random() < self.conf.resample_probability:
            return self._resample(dist)
        return self._perturb(dist, old)

    def _resample(self, dist: FloatDist | IntDist | CategoricalDist) -> Any:
        r = self._rng
        if isinstance(dist, CategoricalDist):
            return r.choice(dist.choices)
        if dist.log:
            value = math.exp(r.uniform(math.log(dist.low), math.log(dist.high)))
        else:
            value = r.uniform(dist.low, dist.high)
        return _fit(dist, value)

    def _perturb(self, dist: FloatDist | IntDist | CategoricalDist, old: Any) -> Any:
        r = self._rng
        if isinstance(dist, CategoricalDist):
            choices = list(dist.choices)
            i = choices.index(old) if old in choices else r.randrange(len(choices))
            j = i + r.choice((-1, 1))
            if not 0 <= j < len(choices):  # at an end of the list: the only neighbour is inward
                j = i - (j - i)
            return choices[min(max(j, 0), len(choices) - 1)]
        factor = r.choice(self.conf.perturb)
        new = _fit(dist, old * factor)
        if new == old and factor != 1 and dist.step:  # 10 * 1.2 back on a step-10 grid, or 0 * 1.2: one grid step
            new = _fit(dist, old + (dist.step if factor > 1 else -dist.step))
        return new


def _fit(dist: FloatDist | IntDist, value: float) -> float | int:
    """`value` clipped to the range and put on its step grid (ints rounded)."""
    value = min(max(value, dist.low), dist.high)
    step = dist.step
    if step:
        value = dist.low + round((value - dist.low) / step) * step
        value = min(value, dist.high)
    return round(value) if isinstance(dist, IntDist) else float(value)
