"""What a fork would be, checked without acting: its start step, its end, and the child's LR from there on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ForkPlan:
    step: int  # the checkpoint it starts from (for "now": the parent's current step; the checkpoint is at or after)
    now: bool  # a checkpoint written when the fork is made, not one that exists
    total_steps: int  # the child's end
    peak_lr: float  # learning_rate: the schedule's peak, not the LR at `step`
    plan: tuple[tuple[int, float], ...]  # the child's planned LR from `step` to its end

    @property
    def start_lr(self) -> float | None:
        """The LR the child's first step uses (the schedule evaluated at the fork step)."""
        return self.plan[0][1] if self.plan else None
