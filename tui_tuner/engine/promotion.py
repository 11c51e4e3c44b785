"""Multi-fidelity promotion's rules, without torch: which trials park at the first rung, when the rung is complete,
and which of them continue (the 2024 Bayesian fine-tuning study's recipe: short runs, then the best to the end)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tui_tuner.preset import Preset

RUNG_ATTR = "rung_eval"  # a trial's eval loss at promote.t1 (user attr, with parked_at_step)
PROMOTED_ATTR = "promoted"  # True once promoted: it then runs to max_steps like any trial


@dataclass(frozen=True)
class Rung:
    """One trial as the promotion decision sees it."""

    number: int
    score: float  # its eval loss at t1
    parked: bool  # still waiting for the decision (else already promoted or dropped)


@dataclass(frozen=True)
class Decision:
    promote: list[int]
    drop: list[tuple[int, int]]  # (trial, its rank from 1) of the parked trials not promoted
    ranked: int


class Promotion:
    def __init__(self, preset: Preset):
        self.preset = preset
        self.conf = preset.promote
        assert self.conf is not None

    @property
    def t1(self) -> int:
        assert self.conf is not None
        return self.conf.t1

    def parks(self, origin: str, attrs: dict[str, Any], step: int) -> bool:
        """A sampler trial parks at t1 once (not when promoted, never the user's own trials)."""
        return origin == "sampler" and step == self.t1 and not attrs.get(PROMOTED_ATTR)

    def decide(self, rungs: list[Rung]) -> Decision:
        """The top_k of every trial that reached the rung, by eval at t1 (ties by number, so a resume that redoes
        a decision cut short makes the same one): the parked ones among them are promoted, the others dropped.
        Trials promoted before count among the top_k."""
        assert self.conf is not None
        ranked = sorted((r for r in rungs if math.isfinite(r.score)), key=lambda r: (r.score, r.number))
        top = {r.number for r in ranked[: self.conf.top_k]}
        promote = [r.number for r in ranked if r.parked and r.number in top]
        drop = [(r.number, i + 1) for i, r in enumerate(ranked) if r.parked and r.number not in top]
        drop += [(r.number, 0) for r in rungs if r.parked and not math.isfinite(r.score)]
        return Decision(promote, drop, len(ranked))
