"""Learning-rate schedules as pure functions of the step, so a checkpoint only needs the step to restore them."""

from __future__ import annotations

import math

from tui_tuner.params import TrialParams


def lr_factor(step: int, p: TrialParams, total_steps: int) -> float:
    """Multiplier of the peak LR for the update made at `step` (0-based)."""
    if p.warmup_steps and step < p.warmup_steps:
        return (step + 1) / p.warmup_steps
    lo = p.min_lr_ratio
    span = max(1, total_steps - p.warmup_steps)
    t = step - p.warmup_steps
    match p.schedule:
        case "constant":
            return 1.0
        case "linear":
            return lo + (1 - lo) * max(0.0, 1 - t / span)
        case "cosine":
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, t / span)))
        case "cosine_restarts":
            period = p.cycle_steps or max(1, span // 3)
            return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * (t % period) / period))
        case "wsd":
            return _wsd(t, span, p.decay_fraction, lo)
        case "cyclic_wsd":
            period = p.cycle_steps or max(1, span // 3)
            return _wsd(t % period, period, p.decay_fraction, lo)
    raise ValueError(f"unknown schedule {p.schedule!r}")


def _wsd(t: int, span: int, decay_fraction: float, lo: float) -> float:
    """Warmup-stable-decay: flat at the peak, then a linear decay over the last `decay_fraction` of the span."""
    decay_steps = max(1, round(span * decay_fraction))
    decay_start = span - decay_steps
    if t < decay_start:
        return 1.0
    return lo + (1 - lo) * max(0.0, 1 - (t - decay_start + 1) / decay_steps)


def planned_lrs(p: TrialParams, total_steps: int, points: int = 200, start: int = 0) -> list[tuple[int, float]]:
    """The planned LR curve from `start` (a fork's step) to the end, sampled at about `points` steps."""
    stride = max(1, (total_steps - start) // points)
    steps = [*range(start, total_steps, stride), total_steps - 1]
    return [(s, p.learning_rate * lr_factor(s, p, total_steps)) for s in dict.fromkeys(steps)]
