"""Immutable views of the sweep that clients (TUI, headless, tests) read; the engine never hands out its state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tui_tuner.engine.lifecycle import ACTIVE, TrialState

STATES = tuple(TrialState)  # every state a client can see, in lifecycle order (counts have a key for each)


@dataclass(frozen=True)
class CheckpointView:
    step: int
    eval_loss: float | None
    path: str


@dataclass(frozen=True)
class TrialSnapshot:
    number: int
    state: TrialState
    step: int
    total_steps: int | None
    params: dict[str, Any]  # the searched params (what Optuna records)
    overrides: dict[str, Any]  # fixed params changed for this trial only (forks, enqueues)
    loss: float | None = None
    eval_loss: float | None = None
    best_eval_loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    steps_per_s: float | None = None  # training steps per second over its last few steps (history.RATE_WINDOW)
    mem_bytes: int | None = None
    peak_mem_bytes: int | None = None  # CUDA: peak allocated on its GPU; CPU: process RSS; shared by co-located trials
    own_mem_bytes: int | None = None  # its own weights + gradients + optimizer state: exact per trial
    device: str = ""
    need_bytes: int | None = None  # the GPU memory placement expected it to need
    wait_reason: str | None = None  # why it has not started ("waiting for GPU memory: needs ...")
    parent: int | None = None
    fork_step: int | None = None
    origin: str = "sampler"  # sampler | enqueue | fork
    stopped_by_user: bool = False
    pause_requested: bool = False  # pause asked for; `state` turns "paused" at the trial's next step boundary
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    checkpoints: tuple[CheckpointView, ...] = ()
    user_attrs: dict[str, Any] = field(default_factory=dict)  # Optuna's, as the engine last set them
    version: int = 0  # bumps on every change: a client redraws a trial only when it moved

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


@dataclass(frozen=True)
class GpuView:
    """One GPU as placement sees it: the free memory it counts on, and our trials there."""

    index: int
    total: int
    free: int  # the driver's free, less what our trials that have not allocated yet were promised
    foreign: int  # other processes' memory
    trials: tuple[int, ...] = ()


@dataclass(frozen=True)
class SweepSnapshot:
    study_name: str
    sampler: str
    pruner: str
    concurrency: int
    n_trials: int
    started_at: float
    elapsed: float
    finished: bool
    trials: tuple[TrialSnapshot, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    best_trial: int | None = None
    best_value: float | None = None
    halted: str | None = None  # why no more trials can start (the sampler failed)
    phase: str = "running"  # loading | running | finished | stopping | stopped
    loading: str | None = None  # what start() is loading now ("loading model ..."), while phase is "loading"
    workers: tuple[dict[str, Any], ...] = ()  # a shared study's workers (engine/workers.py WorkerView, as dicts)
    gpus: tuple[GpuView, ...] = ()  # the GPUs trials are placed on (empty on CPU)
    # Concurrency slots this worker's trials hold, as the scheduler counts them (starting and running trials, and
    # paused ones unless study.paused_frees_slot); None from a client that does not know
    slots_used: int | None = None


METHOD = "PED-ANOVA"  # the importance evaluator engine/insight.py runs


@dataclass(frozen=True)
class InsightPoint:
    trial: int
    value: Any  # the param's value in that trial
    objective: float  # a complete trial's value; a pruned (or killed) one's last intermediate value
    state: str  # complete | pruned | killed


@dataclass(frozen=True)
class ParamInsight:
    name: str
    importance: float | None  # share of the total (they sum to 1); None when `Insight.reason` says why not
    log: bool = False  # searched on a log scale: its scatter's x axis is log too
    choices: tuple[Any, ...] = ()  # a categorical param's choices, in the preset's order
    bounds: tuple[float, float] | None = None  # a numeric param's searched range (the scatter's x range)
    points: tuple[InsightPoint, ...] = ()


@dataclass(frozen=True)
class Insight:
    finished: int  # complete + pruned trials it was computed from (the engine recomputes when this moves)
    complete: int
    params: tuple[ParamInsight, ...] = ()  # most important first; the preset's order without importances
    reason: str | None = None  # one line: why there are no importances (too few trials, a single param)
    method: str = METHOD
