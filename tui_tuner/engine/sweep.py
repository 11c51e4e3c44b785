"""The Sweep: the public facade over the study gateway, the scheduler, the trial threads and the run directory.

Locks, and what each guards (lock order: a higher one may be held while taking a lower one, never the reverse):
0. Scheduler._launch_lock (RLock): its `_stopped` flag and the launch of a trial together, so no trial is
   launched after stop() has collected the threads to stop (the only lock a listener runs under: the launch's
   "starting" event).
1. StudyGateway.lock (RLock): every Optuna call; held across "enqueue + register" so an ask cannot pop a trial
   before its checkpoint and record are in place. stop() takes it once after setting `_stopping`, so no enqueue
   (which checks `_stopping` again under it) writes after the run dir is released.
2. TrialRegistry.lock (RLock): which trials exist and each one's state (Lifecycle.move holds it).
3. TrialControl._cond, per trial: its pause/kill/stop flags and queued work.
4. EventLog._lock, Series._lock: the event tail and listeners; one metric series.
No event listener runs under any of them (Lifecycle emits after releasing 2). Apart: training.model.RNG_LOCK, torch's
process-wide RNG (model builds, a checkpoint's save and restore of it).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState as OptunaState
from pydantic import ValidationError

from tui_tuner.engine import insight as insight_mod
from tui_tuner.engine import resume as resume_mod
from tui_tuner.engine.backend import Backend, TorchBackend, model_of
from tui_tuner.engine.errors import SweepError
from tui_tuner.engine.events import Event, EventLog
from tui_tuner.engine.fork_plan import ForkPlan
from tui_tuner.engine.gpu_inventory import Inventory, default_inventory
from tui_tuner.engine.gpu_pool import GpuPool
from tui_tuner.engine.history import METRIC_KEYS
from tui_tuner.engine.lifecycle import FINISHED, Lifecycle
from tui_tuner.engine.lifecycle import TrialState as S
from tui_tuner.engine.need import NeedKey
from tui_tuner.engine.pbt import Exploit, Member, Pbt
from tui_tuner.engine.promotion import Promotion
from tui_tuner.engine.run_dir import RunDir, RunDirError, stage_copy
from tui_tuner.engine.run_lock import RunDirLock
from tui_tuner.engine.runner import TrialRunner
from tui_tuner.engine.scheduler import Command, Scheduler
from tui_tuner.engine.snapshot import STATES, Insight, SweepSnapshot, TrialSnapshot
from tui_tuner.engine.storage_url import connect_problem
from tui_tuner.engine.study_gateway import PRESET_ATTR, StorageError, StudyGateway, by_user, from_checkpoint
from tui_tuner.engine.trial import TrialRegistry, TrialRun
from tui_tuner.engine.workers import WorkerBeat, new_worker_id
from tui_tuner.format import error_line, fmt_loss, fmt_value
from tui_tuner.params import PARAM_NAMES, TrialParams, first_error, fork_fixed_params
from tui_tuner.preset import Preset, PresetError
from tui_tuner.training.checkpoint_files import CheckpointInfo, checkpoint_dir, list_checkpoints
from tui_tuner.training.schedules import planned_lrs

log = logging.getLogger(__name__)

PBT_ORIGINS = frozenset({"sampler", "pbt"})  # population members: the sampler's and PBT's own clones, not the user's


class Sweep:
    """Public API. Every method is thread-safe; trial-changing commands act at the trial's next step boundary."""

    def __init__(self, preset: Preset, run_dir: str | Path, storage: str | None = None,
                 n_trials: int | None = None, _resuming: bool = False, backend: Backend | None = None,
                 resume_paused: bool = False, join: bool = False, worker: str | None = None,
                 concurrency: int | None = None, inventory: Inventory | None = None):
        for key, value in (("n_trials", n_trials), ("concurrency", concurrency)):
            if value is not None:
                preset = preset.model_copy(update={"study": preset.study.model_copy(update={key: value})})
        self._concurrency_given = concurrency is not None  # over the value a resume would restore
        self.preset = preset
        self.run_dir = Path(run_dir)
        self.layout = RunDir(self.run_dir)
        self.storage_url = storage
        self.backend: Backend = backend or TorchBackend()
        self._resuming = _resuming
        self._resume_paused = resume_paused  # a reopened run's paused trials continue running (headless, scripts)
        self.join = join  # a new sweep may add to a study its storage already holds (else SweepError)
        self.registry = TrialRegistry()
        # This engine's id in the study: new for a new run, the run's own on resume ("" for runs made before ids)
        self.worker_id = new_worker_id() if worker is None else worker
        self.gateway = StudyGateway(preset, self.layout.journal, storage, self.worker_id)
        self.scheduler = Scheduler(self, preset.study.concurrency)
        self.events = EventLog(self.layout.events, previous=_resuming)
        self.lifecycle = Lifecycle(self.registry.lock, self.events.emit, self.scheduler.wake)
        self._phase = "loading"
        self._loading: str | None = f"loading model {preset.model.name}…"
        self._stopping = False
        self._phase_lock = threading.Lock()  # guards _phase and _stopping together (a stop during start())
        self._lock: RunDirLock | None = None
        self.n_train = 0  # training examples, known once start() has loaded the data
        # On a shared --storage: this worker's heartbeat, and the API addresses it advertises to the others
        # (set by the API server before start()).
        self.advertise: dict[str, str | None] = {}
        self.heartbeat: WorkerBeat | None = None
        self._inventory = inventory  # the GPUs' free memory (NVML by default; tests give a fake one)
        self.gpu_pool: GpuPool | None = None  # set by start() when there are GPUs to place trials on
        self.pbt = Pbt(preset) if preset.study.strategy == "pbt" else None
        self.promotion = Promotion(preset) if preset.study.strategy == "promote" else None
        self._insight: Insight | None = None  # the last insight(), kept until another trial finishes
        self._insight_lock = threading.Lock()

    # -- lifecycle of the sweep ----------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | Path, n_trials: int | None = None, backend: Backend | None = None,
             resume_paused: bool = False, concurrency: int | None = None) -> Sweep:
        """Reopen a run directory after a crash or a stop; `start()` then continues it (trials paused then come
        back paused, unless `resume_paused`)."""
        layout = RunDir(Path(run_dir))
        try:
            meta = layout.read_meta()
        except RunDirError as e:
            raise SweepError(str(e)) from None
        preset = Preset.load(layout.preset)
        return cls(preset, run_dir, storage=meta.get("storage"), n_trials=n_trials, _resuming=True, backend=backend,
                   resume_paused=resume_paused, worker=meta.get("worker", ""), concurrency=concurrency)

    def start(self) -> Sweep:
        """Load data and open the study, then return; trials run in background threads."""
        p = self.preset
        self.n_train = self.backend.prepare(p)
        self.gpu_pool = self._make_gpu_pool()
        if self._stopping:  # stopped while loading (the app's q, a signal): nothing was written, nothing runs
            self._phase, self._loading = "stopped", None
            self.scheduler.mark_finished(True)
            return self
        self._loading = "opening the study…"
        try:
            self.gateway.connect()  # a bad --storage fails here, before anything is written
        except Exception as e:  # SQLAlchemy raises many types; the user needs the one line
            raise SweepError(f"{self.gateway.where}: {connect_problem(e, self.storage_url or '')}") from None
        self.claim()
        # From here on trial threads may run: stop them before the interpreter exits (a torch thread alive at
        # exit aborts the process), and on a failed start.
        atexit.register(self.stop)
        try:
            self._open_study()
        except BaseException:
            self._phase = "stopping"
            self.stop()
            raise
        return self

    def _make_gpu_pool(self) -> GpuPool | None:
        """GPUs to place trials on: CUDA present and device.type not 'cpu' (CPU machines are unchanged)."""
        p = self.preset
        if p.device.type == "cpu" or self.backend.cuda_devices() == 0:
            return None
        inventory = self._inventory or default_inventory(self.backend.gpu_reserved)
        gpus = p.device.gpus if isinstance(p.device.gpus, list) else None
        micro = p.params.batch_size

        def key(run: TrialRun) -> NeedKey:
            assert run.params is not None
            return (model_of(p, run.params), p.model.method, run.params.optimizer, run.params.batch_size or micro or 0,
                    p.data.max_length)

        def estimate(run: TrialRun) -> int:
            assert run.params is not None
            return self.backend.estimate_need(p, run.params)

        return GpuPool(inventory, gpus, p.device.trials_per_gpu, key, estimate)

    def claim(self) -> None:
        """Create the run dir and take its lock (idempotent): two processes must never drive one run. An engine
        calls this before start() to serve its control API while the model loads."""
        if self._lock is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock = RunDirLock.acquire(self.layout.lock)

    def unclaim(self) -> None:
        """After a start that wrote nothing (bad data, a stop while loading): release the lock and remove a run
        dir that holds only the lock file, so a failed `run` leaves nothing behind."""
        if self._lock is None or self.layout.meta.exists():
            return
        self._lock.release()
        self._lock = None
        with contextlib.suppress(OSError):
            if {p.name for p in self.run_dir.iterdir()} <= {self.layout.lock.name}:
                self.layout.lock.unlink(missing_ok=True)
                self.run_dir.rmdir()

    def _open_study(self) -> None:
        p = self.preset
        # Events emitted before events.open() are kept and written by it, after the earlier process's ones.
        if (repaired := self.gateway.repair_torn_journal()) is not None:
            self.events.emit("journal_repaired", None, repaired)
        if self.gateway.clear_stale_journal_lock():  # we hold the run-dir lock: its owner is dead
            self.events.emit("stale_lock_removed", None, f"removed {self.layout.journal.name}.lock left by a "
                             "process that died (the run-dir lock proves no live process holds it)")
        self._check_study_is_ours()  # before anything is written
        if left := self.layout.clean_leftovers():  # a crash mid-fork or mid-checkpoint left these
            self.events.emit("leftovers_removed", None, f"cleaned up after a crash: {'; '.join(left)}", items=left)
        self.layout.trials.mkdir(exist_ok=True)
        if not self._resuming:
            self.layout.preset.write_text(p.to_toml())
            self.layout.write_meta(self.storage_url, self.worker_id)
        self.events.open()
        self.gateway.open(max_resource=self.backend.total_steps(p.params))
        if self.gateway.study_attr(PRESET_ATTR) is None:  # the study's creator: what every worker will run
            self.gateway.set_study_attr(PRESET_ATTR, p.to_toml())
        relaunch: list[TrialRun] = []
        legacy: list[tuple[TrialRun, CheckpointInfo | None]] = []
        if self._resuming:
            got = resume_mod.reload(self.gateway, self.layout, p, self.backend.total_steps)
            for run in got.runs:
                self.registry.add(run)
            self.scheduler.sampled = got.sampled
            self.scheduler.time_used = got.elapsed
            if got.concurrency and not self._concurrency_given:
                self.scheduler.concurrency = self.scheduler.requested_concurrency = got.concurrency
            relaunch, legacy = got.relaunch, got.legacy
            for kind, trial, message, data in got.notes:
                self.events.emit(kind, trial, message, **data)
            if self._resume_paused:
                for run in relaunch:
                    run.control.resume()
        self._loading = None
        with self._phase_lock:
            stopped_meanwhile = self._stopping
            self._phase = "stopping" if stopped_meanwhile else "running"
        self.events.emit("sweep_started", None, f"sweep {p.study_name} started in {self.run_dir}",
                         resumed=self._resuming)
        if self.pbt is not None and self.scheduler.concurrency < p.study.n_trials:
            self.events.emit("pbt_note", None, f"PBT: concurrency {self.scheduler.concurrency} < population "
                             f"{p.study.n_trials}: members run a few at a time, and a member can only clone one "
                             "that is running (raise study.concurrency to the population)")
        if stopped_meanwhile:  # stop() came while this was opening the study: carry that stop out now
            self._carry_out_stop(None, announce=True)
            return
        if self.storage_url:  # other workers may share the study: beat, and watch theirs
            self.heartbeat = WorkerBeat(self, self.advertise).start()
        for run, source in legacy:
            try:
                self._continue_legacy(run, source)
            except SweepError as e:
                if self._stopping:  # a stop came meanwhile: it wins; the next resume continues the rest
                    break
                self.events.emit("continue_failed", run.number, f"trial {run.number} (stopped by 0.1.0) is not "
                                 f"continued: {e}")
        self.scheduler.start(relaunch)  # starts nothing once stopped

    def _check_study_is_ours(self) -> None:
        """A new sweep must not add trials to a study that is already there (a --run-dir holding another run's
        journal, two runs on one --storage) unless asked to `join`; a resumed one must not start its study
        over when the study is gone but its trials' files are not (new trial 0 would append to old files)."""
        name, where = self.preset.study_name, self.gateway.where
        n = self.gateway.existing_trials()
        if not self._resuming and n is not None and not self.join:
            raise SweepError(f"{where} already holds a study {name!r} ({n} trial{'s' if n != 1 else ''}): a new "
                             "sweep would add to it; resume that run, use another --run-dir or study name, or "
                             "join it on purpose (--join; join=True in the API)")
        ran = self.layout.trials_that_ran() if self._resuming and not n else []
        if ran:
            raise SweepError(f"{where}: holds no study {name!r}, but {self.layout.trials} holds {len(ran)} "
                             f"trial(s) that ran (e.g. {ran[0]}): refusing to start the study over on their "
                             "files; restore the journal (or a copy such as optuna.journal.torn-*) first")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the budget is spent and every trial has ended; True if it has."""
        return self.scheduler.finished.wait(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Running and paused trials checkpoint at their next step and become interrupted (never told PRUNED
        or COMPLETE): `Sweep.open(run_dir).start()` continues each under its own number."""
        with self._phase_lock:
            already, self._stopping = self._stopping, True
            if self._phase == "loading":
                return  # start() is still loading: it sees the stop and carries it out itself
            if not already and self._phase == "running":
                self._phase = "stopping"
        self._carry_out_stop(timeout, announce=not already)

    def _carry_out_stop(self, timeout: float | None, announce: bool) -> None:
        # An enqueue or fork past its first check may be writing under the gateway lock: let it finish before the
        # run dir is let go (it checks `_stopping` again under that lock, so none is written after).
        if self.gateway.lock.acquire(timeout=-1 if timeout is None else timeout):
            self.gateway.lock.release()
        # The scheduler next: a trial it is starting right now must be among the runs stopped below.
        self.scheduler.stop(timeout)
        if self.preset.study.timeout is not None and self.events.is_open:  # the study is open
            try:
                self.scheduler.record_elapsed()
            except Exception as e:  # a broken storage must not keep the stop from finishing
                log.warning("could not record the time used: %s", error_line(e))
        runs = [r for r in self.registry.all() if r.thread is not None]
        for r in runs:
            r.control.stop()
        for r in runs:
            r.thread.join(timeout)  # type: ignore[union-attr]
        if self.heartbeat is not None:  # after the trials' last writes: its last beat says "stopped"
            self.heartbeat.stop()
        if announce and self.events.is_open:
            self.events.emit("sweep_stopped", None, "sweep stopped")
            self.events.close()
        self._phase = "stopped"
        # A thread that outlived `timeout` may still write to the run dir: keep the lock (the process's exit
        # drops it) so no other process resumes the run under it.
        alive = self.scheduler.alive or any(r.thread is not None and r.thread.is_alive() for r in runs)
        if self._lock is not None and not alive:
            self._lock.release()
        self.scheduler.mark_finished(True)

    @property
    def finished(self) -> bool:
        return self.scheduler.finished.is_set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def resumable(self) -> bool:
        """Work is left that `tui-tuner resume` would do: interrupted or queued trials, or budget left."""
        left = any(r.state in (S.INTERRUPTED, S.WAITING, S.PARKED) for r in self.registry.all())
        return left or (self.halted is None and self.scheduler.budget_left())

    @property
    def only_paused_left(self) -> list[int]:
        """The paused trials, when they are all that keeps the sweep from finishing (nothing runs or can start):
        a client with no pause key (headless) must say so rather than wait forever. Empty otherwise."""
        runs = [r for r in self.registry.all() if r.active]
        if not runs or any(r.state is not S.PAUSED or not r.control.paused for r in runs):
            return []
        if self.scheduler.can_start_now():
            return []
        return [r.number for r in runs]

    @property
    def halted(self) -> str | None:
        """Why the sweep cannot start more trials (its sampler failed), or None."""
        return self.scheduler.halted

    @property
    def study(self) -> optuna.Study:
        return self.gateway.study

    @property
    def study_lock(self) -> threading.RLock:
        return self.gateway.lock

    # -- commands ------------------------------------------------------------------------------
    def pause(self, n: int) -> None:
        run = self._active(n)
        run.control.pause()
        run.version += 1  # pause_requested changed: clients holding this version must fetch it again
        self.scheduler.send(Command("unqueue", trial=n))  # a resume still waiting for a slot is void now

    def resume_trial(self, n: int) -> None:
        """Resume a paused trial. When paused trials free their slot (`study.paused_frees_slot`) and every slot
        is taken, it resumes as soon as one frees, before any new trial starts."""
        run = self._active(n)
        run.version += 1  # pause_requested changes (now, or once a slot frees)
        if self.scheduler.must_wait_for_slot(run):
            # The scheduler queues it (and checks again); a pause after this request voids it (the token).
            self.scheduler.send(Command("resume", trial=n, value=run.control.pause_token))
        else:
            run.control.resume()  # at once, in order with the pause before it

    def kill(self, n: int) -> None:
        """A running or paused trial ends at its next step boundary, told PRUNED with stopped_by_user; a queued
        one is cancelled (never runs; Optuna FAIL with cancelled_by_user)."""
        run = self.registry.get(n)
        if run is not None and run.state in (S.WAITING, S.PARKED):
            self._refuse_if_stopped()
            self.scheduler.send(Command("cancel", trial=n))
            return
        run = self._active(n)
        self.events.emit("kill_requested", n, f"kill of trial {n} requested at step {run.step}")
        run.control.kill()

    def set_concurrency(self, k: int) -> None:
        if k < 1:
            raise SweepError(f"concurrency must be >= 1 (got {k})")
        self._refuse_if_stopped()
        self.scheduler.send(Command("concurrency", value=k))

    @property
    def concurrency(self) -> int:
        return self.scheduler.requested_concurrency

    def enqueue(self, params: dict[str, Any], *, by_user: bool = True) -> int:
        """A trial with these params runs next (before new sampler proposals); searched params it does not
        name are sampled, as with Optuna's enqueue_trial. Returns its trial number. A trial `by_user` is not
        pruned unless the preset's `study.prune_user_trials` says so."""
        with self._refusals("enqueue", None):
            values = self._validated({**self.preset.params.model_dump(), **params}, "enqueue")
            number = self._enqueue(values, {"origin": "enqueue", "by_user": by_user}, fixed=set(params))
        self.events.emit("enqueued", number, f"trial {number} enqueued with {params}", params=params)
        return number

    def checkpoint(self, n: int, timeout: float = 600) -> CheckpointInfo:
        """Write a checkpoint of a running or paused trial now (on its thread, at its step boundary)."""
        run = self._active(n)
        return run.control.submit(lambda: run.runner.checkpoint_now()).result(timeout)

    def fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None, *,
             by_user: bool = True) -> int:
        """A new trial of the study continuing from trial n's checkpoint (weights, optimizer, schedule, data
        position) with `params` overriding the parent's; returns the child's trial number."""
        params = dict(params or {})
        with self._refusals("fork", n):
            parent, values = self._fork_values(n, params)
            source = self._fork_source(parent, step)
            self._fork_end(source.step, values)
            number = self._fork_from(parent, source, values, by_user=by_user)
        self.events.emit("forked", number, f"trial {number} forked from trial {n} at step {source.step}"
                         + (f" with {params}" if params else ""), parent=n, step=source.step, params=params)
        return number

    def check_fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None,
                   points: int = 200) -> ForkPlan:
        """What `fork(n, step, params)` would do, checked as it checks, without acting (no checkpoint is written,
        no trial made, no event): the same SweepError when it would refuse, else the child's plan."""
        parent, values = self._fork_values(n, dict(params or {}))
        now = step is None and parent.active
        at = parent.step if now else self._existing_checkpoint(parent, step).step
        end = self._fork_end(at, values)
        return ForkPlan(step=at, now=now, total_steps=end, peak_lr=values.learning_rate,
                        plan=tuple(planned_lrs(values, end, points, start=at)))

    @contextlib.contextmanager
    def _refusals(self, what: str, n: int | None) -> Iterator[None]:
        """A refused command is said in the event log too (every client's Events panel), then raised."""
        try:
            yield
        except SweepError as e:
            subject = f"fork of trial {n}" if what == "fork" else "new trial"
            self.events.emit("refused", n, f"{subject} refused: {str(e).removeprefix(what + ': ')}",
                             command=what)
            raise

    def _fork_values(self, n: int, params: dict[str, Any]) -> tuple[TrialRun, TrialParams]:
        """The parent and the child's params, or the SweepError saying why there can be no such child."""
        parent = self.registry.get(n)
        if parent is None or parent.params is None:
            raise SweepError(f"fork: no trial {n} in this sweep" if parent is None
                             else f"fork: trial {n} has not started yet")
        unknown = set(params) - PARAM_NAMES
        if unknown:
            raise SweepError(f"fork: unknown hyperparameter(s) {sorted(unknown)}")
        old = parent.params.model_dump()
        fixed = fork_fixed_params(self.preset.model.method)
        refused = [f"{k} ({why})" for k, why in fixed.items() if k in params and params[k] != old.get(k)]
        if refused:
            raise SweepError(f"fork: cannot change {' or '.join(refused)}: start a new trial instead")
        return parent, self._validated({**old, **params}, "fork")

    def _fork_end(self, step: int, values: TrialParams) -> int:
        end = self.backend.total_steps(values)
        if step >= end:
            raise SweepError(f"fork: the checkpoint at step {step} is already at the trial's end "
                             f"(step {end}): raise max_steps (or epochs) to continue it")
        return end

    def _fork_from(self, parent: TrialRun, source: CheckpointInfo, values: TrialParams, *, by_user: bool,
                   **extra: Any) -> int:
        return self._enqueue(values, {
            "origin": "fork", "parent_trial": parent.number, "fork_step": source.step,
            "fork_checkpoint": self.layout.relative(source.path), "by_user": by_user, **extra,
        }, copy_checkpoint=source)

    def _fork_source(self, parent: TrialRun, step: int | None) -> CheckpointInfo:
        if step is None and parent.active:
            try:
                return self.checkpoint(parent.number)
            except OSError as e:
                raise SweepError(f"fork: could not checkpoint trial {parent.number} now: {e}") from None
            except (SweepError, RuntimeError):
                if parent.active:
                    raise
                # It ended meanwhile: its final checkpoint (below) is the latest.
        return self._existing_checkpoint(parent, step)

    def _existing_checkpoint(self, parent: TrialRun, step: int | None) -> CheckpointInfo:
        """The checkpoint at `step` (None: the latest) of those the parent has written."""
        available = list_checkpoints(parent.trial_dir)
        if not available:
            raise SweepError(f"fork: trial {parent.number} has no checkpoint")
        if step is None:
            return available[-1]
        for c in available:
            if c.step == step:
                return c
        raise SweepError(f"fork: trial {parent.number} has no checkpoint at step {step} "
                         f"(available: {', '.join(str(c.step) for c in available)})")

    def _validated(self, values: dict[str, Any], what: str) -> TrialParams:
        unknown = set(values) - PARAM_NAMES
        if unknown:
            raise SweepError(f"{what}: unknown hyperparameter(s) {sorted(unknown)}")
        try:
            return TrialParams.model_validate(values)
        except ValidationError as e:
            raise SweepError(f"{what}: {first_error(e)}") from None

    def _refuse_if_stopped(self) -> None:
        if self._stopping:
            raise SweepError("the sweep is stopped: no new trial can start")
        if self._phase == "loading":
            raise SweepError("the sweep is still loading")

    def _refuse_new_trials(self) -> None:
        self._refuse_if_stopped()
        if self.halted:
            raise SweepError(f"the sweep cannot start trials: {self.halted}")

    def _enqueue(self, values: TrialParams, attrs: dict[str, Any],
                 copy_checkpoint: CheckpointInfo | None = None, fixed: set[str] | None = None) -> int:
        """Enqueue a WAITING trial: searched params in `fixed` (default: all) become Optuna fixed params,
        other changed params are kept in the `overrides` user attr."""
        self._refuse_new_trials()
        searched = {k: getattr(values, k) for k in self.preset.search if fixed is None or k in fixed}
        for k, dist in self.preset.search.items():
            choices = getattr(dist, "choices", None)
            if choices is not None and k in searched and searched[k] not in choices:
                raise SweepError(f"{k}: {searched[k]!r} is not one of the searched choices {choices}")
        defaults = self.preset.params.model_dump()
        attrs["overrides"] = {k: v for k, v in values.model_dump().items()
                              if k not in self.preset.search and v != defaults[k]}
        # Copy first, outside the lock (a copy across filesystems can be slow; a failure must leave no trial).
        staged = _stage_tree(copy_checkpoint.path, self.layout.trials) if copy_checkpoint else None
        try:
            # Under the gateway's lock the scheduler's ask cannot pop the child before its checkpoint is in place
            # and its record registered.
            with self.gateway.lock:
                self._refuse_new_trials()  # again: a stop may have come during the copy (stop() waits for this lock)
                queued = self.gateway.enqueue(searched, attrs)
                if staged is not None and copy_checkpoint is not None:
                    dest = checkpoint_dir(self.layout.trial(queued.number), copy_checkpoint.step)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    staged.rename(dest)
                self.registry.add(resume_mod.record_of(queued, self.layout, self.preset))
        finally:
            if staged is not None:  # what is left of the staging dir: empty after the rename
                shutil.rmtree(staged.parent, ignore_errors=True)
        self.scheduler.wake()
        self.scheduler.mark_finished(False)  # wait() must not return before the new trial has run
        return queued.number

    def _continue_legacy(self, run: TrialRun, source: CheckpointInfo | None) -> None:
        """A 0.1.0 run's stopped trial (told PRUNED then): continue it as a fork of itself, as 0.1.0 did."""
        assert run.params is not None
        n = run.number
        if source is not None:
            child = self._fork_from(run, source, run.params, by_user=run.by_user, continues=n)
            self.events.emit("forked", child, f"trial {child} continues interrupted trial {n} from step "
                             f"{source.step}", parent=n, step=source.step)
        elif run.user_attrs.get("interrupted_before_start"):
            child = self._enqueue(run.params, {"origin": run.origin, "continues": n, "by_user": run.by_user})
            self.events.emit("enqueued", child, f"trial {child} re-runs trial {n} (stopped before its first "
                             "step)", params=run.searched)

    # -- population-based training (a member's own thread, at its boundary) ---------------------
    def pbt_step(self, run: TrialRun) -> tuple[Exploit, int] | None:
        """PBT at `run`'s boundary: when it is in the bottom quantile of the members that reached this step,
        fork a top member's latest checkpoint with explored params as a new trial that takes its place; the
        decision and the child's number, or None (it trains on). A clone that cannot be made is said in the
        events, and `run` trains on."""
        assert self.pbt is not None
        step = run.step
        members = [self._pbt_member(r, step) for r in self.registry.all() if r.origin in PBT_ORIGINS]
        decision = self.pbt.decide(run.number, step, members)
        if decision is None:
            return None
        donor = self.registry.get(decision.donor)
        if donor is None or donor.params is None:  # decide() ranked it running: it has both; never guess
            return None
        try:
            source = self._existing_checkpoint(donor, None)
            before = donor.params.model_dump()
            changes = self.pbt.explore(before)
            _, values = self._fork_values(donor.number, changes)
            self._fork_end(source.step, values)
            diff = {k: [before[k], v] for k, v in changes.items() if v != before[k]}
            child = self._fork_from(donor, source, values, by_user=False, origin="pbt", pbt_replaces=run.number,
                                    pbt_step=step, pbt_changes=diff)
        except SweepError as e:
            self.events.emit("pbt_failed", run.number, f"PBT: trial {run.number} could not clone trial "
                             f"{decision.donor}: {e}; it trains on")
            return None
        change = ", ".join(f"{k} {fmt_value(a)}→{fmt_value(b)}" for k, (a, b) in diff.items()) or "no change"
        self.events.emit("pbt_exploit", child, f"PBT: trial {child} clones trial {decision.donor} at step "
                         f"{source.step} in place of trial {run.number} (eval {fmt_loss(decision.loser_score)} vs "
                         f"{fmt_loss(decision.donor_score)} at step {step}, bottom of {decision.ranked}); {change}",
                         parent=decision.donor, replaces=run.number, step=source.step, changes=diff)
        return decision, child

    def pbt_behind(self, run: TrialRun) -> list[int]:
        """Members still on their way to `run`'s boundary (running or starting, not paused, not yet evaluated and
        checkpointed there): with pbt.synch, `run` waits for them before it is ranked."""
        step = run.step
        behind = []
        for r in self.registry.all():
            if r is run or r.origin not in PBT_ORIGINS or r.state not in (S.RUNNING, S.STARTING) or r.control.paused:
                continue
            if r.fork_step is not None and r.fork_step >= step:
                continue  # a clone from a checkpoint at or past this step: it is never ranked here
            m = self._pbt_member(r, step)
            if r.step <= step and (m.score is None or not m.active):
                behind.append(r.number)
        return behind

    @staticmethod
    def _pbt_member(run: TrialRun, step: int) -> Member:
        """`run` as PBT ranks it at `step`: its own eval there (a clone's history before its fork step is its
        donor's), and whether it can be cloned at that step now."""
        score = None
        if step > (run.fork_step if run.fork_step is not None else -1):
            for s, v in reversed(run.history.series["eval_loss"].points(until=step)):
                if s == step:
                    score = v
                break
        # A donor's clone starts from its checkpoint at this step or later: its eval can be there a moment before.
        cloneable = run.state in (S.RUNNING, S.PAUSED) and any(c.step >= step for c in run.checkpoints)
        return Member(run.number, score, cloneable)

    # -- the scheduler's and the trial threads' side (SchedulerHost, TrialHost) ----------------
    def emit(self, kind: str, trial: int | None, message: str, **data: Any) -> Event:
        return self.events.emit(kind, trial, message, **data)

    def prepare_asked(self, trial: optuna.Trial, attrs: dict[str, Any], params: TrialParams) -> TrialRun:
        """The record of a trial just asked: the queued one it was, or a new one for a sampler proposal."""
        run = self.registry.get(trial.number)
        if run is None:
            run = TrialRun(number=trial.number, trial=None, params=None, searched={}, overrides={},
                           trial_dir=self.layout.trial(trial.number), origin=attrs["origin"], by_user=by_user(attrs),
                           user_attrs=dict(attrs))
            self.registry.add(run)
        run.trial, run.params, run.searched = trial, params, dict(trial.params)
        run.overrides = dict(attrs.get("overrides", {}))
        run.user_attrs = dict(attrs)
        run.total = self.backend.total_steps(params)
        if from_checkpoint(attrs):
            run.resume_from = checkpoint_dir(run.trial_dir, attrs["fork_step"])
            parent = self.registry.get(run.parent) if run.parent is not None else None
            if parent is not None and run.fork_step is not None:
                run.history.copy_prefix(parent.history, until=run.fork_step)
        return run

    def launch(self, run: TrialRun) -> None:
        """Start its thread (scheduler thread only): waiting or interrupted -> starting."""
        runner = TrialRunner(self, run)
        thread = threading.Thread(target=runner, name=f"trial-{run.number}", daemon=True)
        frm = run.state
        where = (f" from checkpoint step {run.resume_from.name.removeprefix('step-')}" if run.resume_from
                 else " from step 0 (no checkpoint)") if frm in (S.INTERRUPTED, S.PARKED) else ""
        verb = {S.INTERRUPTED: "resumes", S.PARKED: "promoted: continues"}.get(frm, "starts")
        self.lifecycle.move(run, S.STARTING, f"trial {run.number} {verb}{where}"
                            + (" (paused)" if run.control.paused else ""))
        # Set once the move is made: a refused move leaves no unstarted thread for a stop to join. A stop that a
        # listener of the move's event made has not seen this thread: it is told to stop here instead.
        run.runner, run.thread, run.reaped = runner, thread, False
        if self._stopping:
            run.control.stop()
        try:
            run.thread.start()
        except RuntimeError as e:  # "can't start new thread": out of threads or memory
            self._thread_failed(run, e)

    def _thread_failed(self, run: TrialRun, e: RuntimeError) -> None:
        """Its thread could not start: no thread will ever end it, so end it here (starting -> failed, told FAIL);
        the scheduler goes on. If the storage fails too, it is left interrupted (RUNNING) for resume."""
        run.thread = run.runner = None
        run.control.fail_pending(RuntimeError(f"trial {run.number} has finished"))
        msg = f"could not start its thread: {error_line(e)}"
        try:
            if run.trial is not None:
                self.gateway.set_attrs(run.trial, {"error": msg})
                self.gateway.tell(run.trial, OptunaState.FAIL)
        except StorageError:
            self.lifecycle.move(run, S.INTERRUPTED, f"trial {run.number} interrupted: {msg}")
            raise  # the scheduler halts the sweep on it
        run.error, run.told = msg, True
        run.user_attrs["error"] = msg
        self.lifecycle.move(run, S.FAILED, f"trial {run.number} failed: {msg}")

    def trial_ended(self, run: TrialRun) -> None:
        if self.gpu_pool is not None:
            self.gpu_pool.ended(run, run.gpu_shared)
        run.reaped = True
        self.scheduler.wake()

    def gpu_oom(self, run: TrialRun) -> None:
        if self.gpu_pool is not None:
            self.gpu_pool.oom(run)

    def storage_failed(self, message: str) -> None:
        """A trial thread's storage call failed: the scheduler halts the sweep and interrupts the trials."""
        self.scheduler.send(Command("halt", reason=message))

    # -- reads ---------------------------------------------------------------------------------
    def trials(self) -> list[TrialSnapshot]:
        return [r.snapshot() for r in self.registry.all()]

    def trial(self, n: int) -> TrialSnapshot:
        run = self.registry.get(n)
        if run is None:
            raise SweepError(f"no trial {n} in this sweep")
        return run.snapshot()

    def snapshot(self) -> SweepSnapshot:
        trials = tuple(self.trials())
        counts = {str(s): 0 for s in STATES}
        for t in trials:
            counts[t.state] += 1
        done = [t for t in trials if t.state == S.COMPLETE and t.eval_loss is not None and math.isfinite(t.eval_loss)]
        best = min(done, key=lambda t: t.eval_loss) if done else None  # type: ignore[arg-type,return-value]
        sch = self.scheduler
        phase = "finished" if self._phase == "running" and self.finished else self._phase
        return SweepSnapshot(
            study_name=self.preset.study_name, sampler=self.preset.study.sampler, pruner=self.preset.strategy_label,
            concurrency=sch.requested_concurrency, n_trials=self.preset.study.n_trials, started_at=sch.started_at,
            elapsed=(sch.finished_at or time.time()) - sch.started_at, finished=self.finished, trials=trials,
            counts=counts, best_trial=best.number if best else None, best_value=best.eval_loss if best else None,
            halted=sch.halted, phase=phase, loading=self._loading,
            gpus=self.gpu_pool.last if self.gpu_pool is not None else (), slots_used=sch.occupied(),
        )

    def series(self, n: int, key: str = "loss", max_points: int | None = 200) -> list[tuple[float, float]]:
        """A metric of trial n, bucket-averaged to at most `max_points`; forks start with their parent's curve."""
        if key not in METRIC_KEYS:
            raise SweepError(f"unknown metric {key!r} (one of {', '.join(METRIC_KEYS)})")
        run = self.registry.get(n)
        return run.history.series[key].points(max_points) if run else []

    def lr_plan(self, n: int, points: int = 200) -> list[tuple[int, float]]:
        """Trial n's planned LR from step 0; [] while it is unknown (a queued trial whose searched params the
        sampler has yet to draw)."""
        run = self.registry.get(n)
        if run is None:
            return []
        params = run.params or self._queued_params(run)
        if params is None:
            return []
        return planned_lrs(params, run.total or self.backend.total_steps(params), points)

    def _queued_params(self, run: TrialRun) -> TrialParams | None:
        """A waiting trial's params when nothing is left to sample (a fork, an enqueue naming every searched
        param); None otherwise."""
        if run.state is not S.WAITING or not set(self.preset.search) <= run.searched.keys():
            return None
        try:
            return TrialParams.model_validate({**self.preset.params.model_dump(), **run.searched, **run.overrides})
        except ValidationError:
            return None

    def insight(self) -> Insight:
        """Param importances and each param's finished trials (engine/insight.py), recomputed only when the
        number of finished trials moved: the importance evaluation is costly and clients ask every few seconds."""
        with self._insight_lock:  # one evaluation at a time: concurrent askers wait for it, not redo it
            trials = self.gateway.finished_trials()
            if self._insight is None or self._insight.finished != len(insight_mod.finished(trials)):
                self._insight = insight_mod.build(trials, self.preset.search, self.gateway.importances)
            return self._insight

    def events_since(self, seq: int = 0) -> list[Event]:
        return self.events.since(seq)

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        return self.events.subscribe(fn)

    def best(self) -> TrialSnapshot | None:
        snap = self.snapshot()
        return self.trial(snap.best_trial) if snap.best_trial is not None else None

    def _active(self, n: int) -> TrialRun:
        run = self.registry.get(n)
        if run is None:
            # A client attached while the model loads sees no trials yet: say why, not "no trial 0".
            raise SweepError("the sweep is still loading: no trial runs yet" if self._phase == "loading"
                             else f"no trial {n} in this sweep")
        if not run.active:
            raise SweepError(f"trial {n} is {run.state}, not running or paused")
        return run


def _stage_tree(src: Path, root: Path) -> Path:
    try:
        return stage_copy(src, root)
    except OSError as e:
        raise SweepError(f"fork: cannot copy checkpoint {src}: {e.strerror or e}") from None


__all__ = ["FINISHED", "PresetError", "Sweep", "SweepError"]
