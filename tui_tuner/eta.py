"""Time arithmetic on snapshots: a trial's elapsed time and ETA, the sweep's ETA, and how durations are written."""

from __future__ import annotations

import time
from statistics import mean

from tui_tuner.engine.snapshot import SweepSnapshot, TrialSnapshot

ACTIVE_STATES = ("starting", "running", "paused")
# Ended sampler trials whose step count says how long a sampler trial runs here (pruning and early stopping
# included); failed, cancelled and interrupted ones ran short for reasons that say nothing about the next one.
ENDED_STATES = ("complete", "pruned", "killed")


def trial_elapsed(t: TrialSnapshot, now: float | None = None) -> float | None:
    """Seconds since it started, up to its end (pauses included); None before it started."""
    if t.started_at is None:
        return None
    end = t.finished_at if t.finished_at is not None else (time.time() if now is None else now)
    return max(0.0, end - t.started_at)


def remaining_steps(t: TrialSnapshot, full_steps: int | None = None) -> int | None:
    """Steps it has left to train: to its total (`full_steps` while the total is not known yet); a queued fork
    starts at its fork step."""
    total = t.total_steps or full_steps
    if total is None:
        return None
    done = t.step if t.state != "waiting" else (t.fork_step or 0)
    return max(0, total - done)


def trial_eta(t: TrialSnapshot) -> float | None:
    """Seconds until a running trial reaches its last step at its recent rate; None when it is not moving (paused,
    queued, ended) or its rate or total is unknown."""
    if t.state != "running" or not t.steps_per_s or t.total_steps is None:
        return None
    return max(0, t.total_steps - t.step) / t.steps_per_s


def sampler_trials(snap: SweepSnapshot) -> int:
    """Trials the sampler proposed so far (what study.n_trials budgets); cancelled ones never ran."""
    return sum(1 for t in snap.trials if t.origin == "sampler" and t.state != "cancelled")


def steps_per_trial(snap: SweepSnapshot, full_steps: int | None = None) -> float | None:
    """Steps a sampler trial still to come is expected to train: the mean of the ended ones, else a full trial
    (`full_steps`, or the largest total any trial has)."""
    ended = [t.step for t in snap.trials if t.origin == "sampler" and t.state in ENDED_STATES]
    return mean(ended) if ended else full_trial(snap, full_steps)


def full_trial(snap: SweepSnapshot, full_steps: int | None = None) -> int | None:
    """The steps of a whole trial: `full_steps` (the preset's max_steps), else the largest total any trial has."""
    totals = [t.total_steps for t in snap.trials if t.total_steps]
    return full_steps or (max(totals) if totals else None)


def sweep_eta(snap: SweepSnapshot, full_steps: int | None = None) -> float | None:
    """Seconds until the budget is spent: the steps left (active and queued trials to their ends, plus the
    sampler budget not yet proposed at `steps_per_trial` each) over the running trials' summed rate. None when
    the sweep is not running or nothing runs at a known rate. Parked trials (promotion) are left out: whether
    they run again is decided at the end."""
    if snap.phase != "running" or snap.halted:
        return None
    rate = sum(t.steps_per_s or 0.0 for t in snap.trials if t.state == "running")
    if rate <= 0:
        return None
    steps, full = 0.0, full_trial(snap, full_steps)
    for t in snap.trials:
        if t.state in ACTIVE_STATES or t.state == "waiting":
            left = remaining_steps(t, full)
            if left is None:
                return None
            steps += left
    budget_left = max(0, snap.n_trials - sampler_trials(snap))
    if budget_left:
        per = steps_per_trial(snap, full_steps)
        if per is None:
            return None
        steps += budget_left * per
    return steps / rate
