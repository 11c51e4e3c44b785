"""TrialRun: the engine's record of one trial, from queued to finished, and its immutable snapshot."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_tuner.engine.control import TrialControl
from tui_tuner.engine.history import TrialHistory
from tui_tuner.engine.lifecycle import ACTIVE, TrialState
from tui_tuner.engine.snapshot import CheckpointView, TrialSnapshot
from tui_tuner.params import TrialParams
from tui_tuner.training.checkpoint_files import CheckpointInfo

if TYPE_CHECKING:
    import optuna

    from tui_tuner.engine.backend import Trainer


@dataclass
class TrialRun:
    """`state` changes only through Lifecycle.move (under the registry lock), which bumps `version`; the trial's
    thread also bumps it for new metrics. The metric fields are written only by the trial's own thread and read
    without a lock for snapshots (single attribute reads)."""

    number: int
    trial: optuna.Trial | None  # the live Optuna trial while it can still be told; None once finished
    params: TrialParams | None  # None while waiting: sampled params are known only once it is asked
    searched: dict[str, Any]
    overrides: dict[str, Any]
    trial_dir: Path
    origin: str = "sampler"
    by_user: bool = False  # enqueued or forked by the user: exempt from pruning unless the preset says otherwise
    parent: int | None = None
    fork_step: int | None = None
    resume_from: Path | None = None
    state: TrialState = TrialState.WAITING
    step: int = 0
    total: int | None = None
    last: dict[str, float] = field(default_factory=dict)
    best_eval: float | None = None
    peak_mem: int | None = None
    own_mem: int | None = None  # weights + gradients + optimizer state of this trial alone
    device: str = ""  # where it trains: "cpu", "cuda:0"
    gpu: int | None = None  # the GPU placement gave it (None on CPU)
    need: int | None = None  # the memory placement expected it to need there
    gpu_shared: bool = False  # another trial of ours shared its GPU: its peak is not its own
    wait_reason: str | None = None  # why it waits to start (no GPU has room)
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    history: TrialHistory = field(default_factory=TrialHistory)
    control: TrialControl = field(default_factory=TrialControl)
    thread: threading.Thread | None = None
    version: int = 0
    has_report: bool = False
    ft: Trainer | None = None
    start_step: int = 0  # the step it (re)started from: a stop before any new step writes no new checkpoint
    reaped: bool = False  # its thread has ended and the scheduler has counted it (an OOM retry is queued first)
    told: bool = False
    runner: Any = None  # its TrialRunner while it has a thread (fork's checkpoint-now runs on it)
    user_attrs: dict[str, Any] = field(default_factory=dict)  # a copy of Optuna's, so reads never take its lock
    _snap: tuple[tuple[Any, ...], TrialSnapshot] | None = field(default=None, repr=False, compare=False)

    def snapshot(self) -> TrialSnapshot:
        """The trial as clients see it, rebuilt only when it changed: clients (the app, every attached client)
        ask for all trials several times a second, and a long sweep's finished ones never change. `version`
        covers nearly everything; the other fields in the key are the ones set beside a version bump."""
        key = (self.version, self.state, self.control.paused, self.step, self.error, self.finished_at,
               len(self.checkpoints), len(self.user_attrs), self.wait_reason, self.device)
        cached = self._snap
        if cached is not None and cached[0] == key:
            return cached[1]
        snap = self._build_snapshot()
        self._snap = (key, snap)
        return snap

    def _build_snapshot(self) -> TrialSnapshot:
        last = self.last
        return TrialSnapshot(
            number=self.number, state=self.state, step=self.step, total_steps=self.total,
            params=dict(self.searched), overrides=dict(self.overrides),
            loss=last.get("loss"), eval_loss=last.get("eval_loss"), best_eval_loss=self.best_eval,
            lr=last.get("lr"), grad_norm=last.get("grad_norm"), tokens_per_s=last.get("tokens_per_s"),
            steps_per_s=self.history.steps_per_s,
            mem_bytes=int(last["mem_bytes"]) if "mem_bytes" in last else None, peak_mem_bytes=self.peak_mem,
            own_mem_bytes=self.own_mem, device=self.device, need_bytes=self.need, wait_reason=self.wait_reason,
            parent=self.parent, fork_step=self.fork_step, origin=self.origin,
            stopped_by_user=self.state is TrialState.KILLED, pause_requested=self.control.paused, error=self.error,
            started_at=self.started_at, finished_at=self.finished_at,
            checkpoints=tuple(CheckpointView(c.step, c.eval_loss, str(c.path)) for c in self.checkpoints),
            user_attrs=dict(self.user_attrs), version=self.version,
        )

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


class TrialRegistry:
    """Every trial of this sweep by number (queued, live, finished). `lock` guards the dict and, through
    Lifecycle.move, each record's state: a reader holding it sees each trial once, in one state."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._runs: dict[int, TrialRun] = {}

    def add(self, run: TrialRun) -> None:
        with self.lock:
            self._runs[run.number] = run

    def get(self, n: int) -> TrialRun | None:
        with self.lock:
            return self._runs.get(n)

    def all(self) -> list[TrialRun]:
        with self.lock:
            return sorted(self._runs.values(), key=lambda r: r.number)

    def __contains__(self, n: int) -> bool:
        with self.lock:
            return n in self._runs
