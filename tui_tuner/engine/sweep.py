"""The Sweep: an in-process Optuna study, a scheduler thread, one thread per trial, and the control API."""

from __future__ import annotations

import atexit
import json
import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from pydantic import ValidationError

from tui_tuner.engine.events import Event, EventLog
from tui_tuner.engine.history import METRIC_KEYS
from tui_tuner.engine.jsonl import read_jsonl
from tui_tuner.engine.run_lock import RunDirLock
from tui_tuner.engine.runner import TrialRun, TrialRunner
from tui_tuner.engine.snapshot import STATES, SweepSnapshot, TrialSnapshot
from tui_tuner.engine.study import make_pruner, make_sampler, make_storage, suggest_params
from tui_tuner.format import error_line, first_line
from tui_tuner.params import PARAM_NAMES, TrialParams, first_error, shape_params
from tui_tuner.preset import Preset, PresetError
from tui_tuner.training import checkpoint as ckpt
from tui_tuner.training.finetune import DataBundle, prepare_data, total_steps
from tui_tuner.training.schedules import planned_lrs

SWEEP_FILE = "sweep.json"

log = logging.getLogger(__name__)


class SweepError(ValueError):
    """A command that cannot be carried out (unknown trial, missing checkpoint, bad override); one line."""


class _TrialOrRunMethod:
    """`Sweep.resume(run_dir)` reopens a run; `sweep.resume(n)` resumes a paused trial."""

    def __get__(self, obj: Sweep | None, cls: type[Sweep]) -> Callable[..., Any]:
        if obj is None:
            return cls.open
        return obj.resume_trial


class Sweep:
    """Public API. Every method is thread-safe; trial-changing commands act at the trial's next step boundary."""

    resume = _TrialOrRunMethod()

    def __init__(self, preset: Preset, run_dir: str | Path, storage: str | None = None,
                 n_trials: int | None = None, _resuming: bool = False):
        if n_trials is not None:
            preset = preset.model_copy(update={"study": preset.study.model_copy(update={"n_trials": n_trials})})
        self.preset = preset
        self.run_dir = Path(run_dir)
        self.storage_url = storage
        self._resuming = _resuming
        self.study_lock = threading.RLock()
        self._cond = threading.Condition()
        self._runs: dict[int, TrialRun] = {}
        self._concurrency = preset.study.concurrency
        # Queued (WAITING) trials as the UI sees them, kept here so reads never wait on the study.
        self._queue: dict[int, TrialSnapshot] = {}
        self._sampled = 0
        self._stopping = False
        self._halted: str | None = None  # why no more trials can start (the sampler broke); running ones go on
        self._resume_pending: list[int] = []  # resumes waiting for a slot (paused_frees_slot)
        self._lock: RunDirLock | None = None
        self._asking: tuple[int, int] | None = None  # (number, trial id) of the trial an ask is creating
        self._done = threading.Event()
        self._finished_at: float | None = None
        self._scheduler: threading.Thread | None = None
        self._started_at = 0.0
        self.study: optuna.Study
        self.events: EventLog
        self.data: DataBundle
        self.tokenizer: Any = None
        self._max_steps_hint = 1

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | Path, n_trials: int | None = None) -> Sweep:
        """Reopen a run directory after a crash or a stop; `start()` then continues it."""
        run_dir = Path(run_dir)
        meta = run_dir / SWEEP_FILE
        if not meta.is_file() or not (run_dir / "preset.toml").is_file():
            raise SweepError(f"{run_dir}: not a tui-tuner run directory (no {SWEEP_FILE} / preset.toml)")
        info = json.loads(meta.read_text())
        preset = Preset.load(run_dir / "preset.toml")
        return cls(preset, run_dir, storage=info.get("storage"), n_trials=n_trials, _resuming=True)

    def start(self) -> Sweep:
        """Prepare data and the study, then return at once; trials run in background threads."""
        p = self.preset
        torch.set_num_threads(p.device.threads_per_trial)
        self.tokenizer, self.data = prepare_data(p.model.name, p.data, p.model.trust_remote_code)
        storage = self._url_storage()  # a bad --storage fails here, before anything is written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = RunDirLock.acquire(self.run_dir)  # two processes must never drive one run
        # From here on trial threads may run (a resume launches them in _reload): stop them before the
        # interpreter exits (a torch thread alive at exit aborts the process), and on a failed start.
        atexit.register(self.stop)
        try:
            self._open_study(storage)
        except BaseException:
            self.stop()
            raise
        self._scheduler = threading.Thread(target=self._schedule_loop, name="tui-tuner-scheduler", daemon=True)
        self._scheduler.start()
        return self

    def _open_study(self, storage: optuna.storages.BaseStorage | None) -> None:
        p = self.preset
        (self.run_dir / "trials").mkdir(exist_ok=True)
        if not self._resuming:
            (self.run_dir / "preset.toml").write_text(p.to_toml())
            (self.run_dir / SWEEP_FILE).write_text(json.dumps({"storage": self.storage_url, "created": time.time()}))
        self.events = EventLog(self.run_dir / "events.jsonl")
        self._max_steps_hint = total_steps(p.params, len(self.data.train))
        self.study = optuna.create_study(
            study_name=p.study_name, storage=storage or make_storage(self.run_dir, None),
            sampler=self._track_asks(make_sampler(p)), pruner=make_pruner(p, self._max_steps_hint),
            direction="minimize", load_if_exists=True,
        )
        self._started_at = time.time()
        if self._resuming:
            offset = len(self.study.get_trials(deepcopy=False))
            self.study.sampler = self._track_asks(make_sampler(p, seed_offset=offset))
            self._reload()
        self.events.emit("sweep_started", None, f"sweep {p.study_name} started in {self.run_dir}",
                         resumed=self._resuming)

    def _url_storage(self) -> optuna.storages.BaseStorage | None:
        if not self.storage_url:
            return None
        try:
            return make_storage(self.run_dir, self.storage_url)
        except Exception as e:  # SQLAlchemy raises many types; the user needs the one line
            raise SweepError(f"--storage {self.storage_url}: {first_line(e)}") from None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the budget is spent and every trial has ended; True if it has."""
        return self._done.wait(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Running trials end cleanly at their next step (checkpointed, told PRUNED); nothing stays RUNNING."""
        with self._cond:
            if self._stopping:
                already = True
            else:
                already, self._stopping = False, True
            self._cond.notify_all()
        # The scheduler first: a trial it is starting right now must be among the runs stopped below.
        if self._scheduler is not None and self._scheduler is not threading.current_thread():
            self._scheduler.join(timeout)
        with self._cond:
            runs = [r for r in self._runs.values() if r.thread is not None]
        for r in runs:
            r.control.stop()
        for r in runs:
            r.thread.join(timeout)  # type: ignore[union-attr]
        if not already and hasattr(self, "events"):
            self.events.emit("sweep_stopped", None, "sweep stopped")
            self.events.close()
        # A thread that outlived `timeout` may still write to the run dir: keep the lock (the process's exit
        # drops it) so no other process resumes the run under it.
        if self._lock is not None and not any(r.thread.is_alive() for r in runs):  # type: ignore[union-attr]
            self._lock.release()
        self._set_done(True)

    def _set_done(self, done: bool) -> None:
        """Finished (or not); elapsed time stops at the finish and runs again if a new trial reopens the sweep."""
        if done:
            self._finished_at = self._finished_at or time.time()
            self._done.set()
        else:
            self._finished_at = None
            self._done.clear()

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def halted(self) -> str | None:
        """Why the sweep cannot start more trials (its sampler failed), or None."""
        return self._halted

    # -- commands ------------------------------------------------------------------------------
    def pause(self, n: int) -> None:
        run = self._active(n)
        with self._cond:
            if n in self._resume_pending:
                self._resume_pending.remove(n)
            run.control.pause()

    def resume_trial(self, n: int) -> None:
        """Resume a paused trial. When paused trials free their slot (`study.paused_frees_slot`) and every slot
        is taken, it resumes as soon as one frees, before any new trial starts."""
        run = self._active(n)
        with self._cond:
            # Paused for real (not just asked to): a pause its thread has not reached yet still holds the slot.
            wait = (self.preset.study.paused_frees_slot and run.control.paused and run.state == "paused"
                    and self._occupied() >= self._concurrency)
            if not wait:
                run.control.resume()
            elif n not in self._resume_pending:
                self._resume_pending.append(n)
            self._cond.notify_all()
        if wait:
            self.events.emit("resume_queued", n, f"trial {n} resumes when a slot frees "
                             f"(concurrency {self._concurrency})")

    def kill(self, n: int) -> None:
        """Ends trial n at its next step boundary; Optuna records it PRUNED with stopped_by_user."""
        run = self._active(n)
        self.events.emit("kill_requested", n, f"kill of trial {n} requested at step {run.step}")
        run.control.kill()

    def set_concurrency(self, k: int) -> None:
        if k < 1:
            raise SweepError(f"concurrency must be >= 1 (got {k})")
        with self._cond:
            self._concurrency = k
            self._cond.notify_all()
        self.events.emit("concurrency", None, f"concurrency set to {k}", concurrency=k)

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def enqueue(self, params: dict[str, Any], *, by_user: bool = True) -> int:
        """A trial with these params runs next (before new sampler proposals); searched params it does not
        name are sampled, as with Optuna's enqueue_trial. Returns its trial number. A trial `by_user` is not
        pruned unless the preset's `study.prune_user_trials` says so."""
        values = self._validated({**self.preset.params.model_dump(), **params}, "enqueue")
        number = self._enqueue(values, {"origin": "enqueue", "by_user": by_user}, fixed=set(params))
        self.events.emit("enqueued", number, f"trial {number} enqueued with {params}", params=params)
        return number

    def checkpoint(self, n: int, timeout: float = 600) -> ckpt.CheckpointInfo:
        """Write a checkpoint of a running or paused trial now (on its thread, at its step boundary)."""
        run = self._active(n)
        return run.control.submit(run.runner.checkpoint_now).result(timeout)

    def fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None, *,
             by_user: bool = True) -> int:
        """A new trial of the study continuing from trial n's checkpoint (weights, optimizer, schedule, data
        position) with `params` overriding the parent's; returns the child's trial number."""
        parent = self._runs.get(n)
        if parent is None:
            raise SweepError(f"fork: no trial {n} in this sweep")
        params = dict(params or {})
        unknown = set(params) - PARAM_NAMES
        if unknown:
            raise SweepError(f"fork: unknown hyperparameter(s) {sorted(unknown)}")
        old = parent.params.model_dump()
        fixed = shape_params(self.preset.model.method)
        changed_shape = sorted(k for k in fixed & params.keys() if params[k] != old.get(k))
        if changed_shape:
            raise SweepError(f"fork: cannot change {', '.join(changed_shape)}: it changes the trained tensors, "
                             "so the parent's weights and optimizer state would not fit (start a new trial instead)")
        values = self._validated({**old, **params}, "fork")
        source = self._fork_source(parent, step)
        end = total_steps(values, len(self.data.train))
        if source.step >= end:
            raise SweepError(f"fork: the checkpoint at step {source.step} is already at the trial's end "
                             f"(step {end}): raise max_steps (or epochs) to continue it")
        number = self._enqueue(values, {
            "origin": "fork", "parent_trial": n, "fork_step": source.step, "fork_checkpoint": str(source.path),
            "by_user": by_user,
        }, copy_checkpoint=source)
        self.events.emit("forked", number, f"trial {number} forked from trial {n} at step {source.step}"
                         + (f" with {params}" if params else ""), parent=n, step=source.step, params=params)
        return number

    def _fork_source(self, parent: TrialRun, step: int | None) -> ckpt.CheckpointInfo:
        if step is None and parent.active:
            try:
                return self.checkpoint(parent.number)
            except OSError as e:
                raise SweepError(f"fork: could not checkpoint trial {parent.number} now: {e}") from None
            except (SweepError, RuntimeError):
                if parent.active:
                    raise
                # It ended meanwhile: its final checkpoint (below) is the latest.
        available = ckpt.list_checkpoints(parent.trial_dir)
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

    def _enqueue(self, values: TrialParams, attrs: dict[str, Any],
                 copy_checkpoint: ckpt.CheckpointInfo | None = None, fixed: set[str] | None = None) -> int:
        """Enqueue a WAITING trial: searched params in `fixed` (default: all) become Optuna fixed params,
        other changed params are kept in the `overrides` user attr."""
        if self._stopping:
            raise SweepError("the sweep is stopped: no new trial can start")
        if self._halted:
            raise SweepError(f"the sweep cannot start trials: {self._halted}")
        searched = {k: getattr(values, k) for k in self.preset.search if fixed is None or k in fixed}
        for k, dist in self.preset.search.items():
            choices = getattr(dist, "choices", None)
            if choices is not None and k in searched and searched[k] not in choices:
                raise SweepError(f"{k}: {searched[k]!r} is not one of the searched choices {choices}")
        defaults = self.preset.params.model_dump()
        attrs["overrides"] = {k: v for k, v in values.model_dump().items()
                              if k not in self.preset.search and v != defaults[k]}
        # Copy first, outside the lock (a copy across filesystems can be slow; a failure must leave no trial).
        staged = _stage_tree(copy_checkpoint.path, self.run_dir / "trials") if copy_checkpoint else None
        try:
            # Holding study_lock keeps the scheduler's ask from starting the child before its checkpoint is in
            # place and it is in the queue. Lock order everywhere: study_lock, then _cond.
            with self.study_lock:
                self.study.enqueue_trial(searched, user_attrs=attrs, skip_if_exists=False)
                queued = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[-1]
                if staged is not None and copy_checkpoint is not None:
                    dest = ckpt.checkpoint_dir(self._trial_dir(queued.number), copy_checkpoint.step)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    staged.rename(dest)
                with self._cond:
                    self._queue[queued.number] = _waiting_snapshot(queued)
                    self._set_done(False)  # wait() must not return before the new trial has run
                    self._cond.notify_all()
        finally:
            if staged is not None:  # what is left of the staging dir: empty after the rename
                shutil.rmtree(staged.parent, ignore_errors=True)
        return queued.number

    # -- reads ---------------------------------------------------------------------------------
    def trials(self) -> list[TrialSnapshot]:
        with self._cond:
            runs = list(self._runs.values())
            snaps = list(self._queue.values())
        snaps += [r.snapshot() for r in runs]
        return sorted(snaps, key=lambda s: s.number)

    def trial(self, n: int) -> TrialSnapshot:
        with self._cond:  # a trial moves from the queue to the runs under this lock: never in neither
            run = self._runs.get(n)
            queued = self._queue.get(n)
        if run is not None:
            return run.snapshot()
        if queued is not None:
            return queued
        raise SweepError(f"no trial {n} in this sweep")

    def snapshot(self) -> SweepSnapshot:
        trials = tuple(self.trials())
        counts = {s: 0 for s in STATES}
        for t in trials:
            counts[t.state] += 1
        done = [t for t in trials if t.state == "complete" and t.eval_loss is not None and math.isfinite(t.eval_loss)]
        best = min(done, key=lambda t: t.eval_loss) if done else None  # type: ignore[arg-type,return-value]
        return SweepSnapshot(
            study_name=self.preset.study_name, sampler=self.preset.study.sampler, pruner=self.preset.study.pruner,
            concurrency=self._concurrency, n_trials=self.preset.study.n_trials, started_at=self._started_at,
            elapsed=(self._finished_at or time.time()) - self._started_at, finished=self.finished, trials=trials,
            counts=counts,
            best_trial=best.number if best else None, best_value=best.eval_loss if best else None,
            halted=self._halted,
        )

    def series(self, n: int, key: str = "loss", max_points: int | None = 200) -> list[tuple[float, float]]:
        """A metric of trial n, bucket-averaged to at most `max_points`; forks start with their parent's curve."""
        if key not in METRIC_KEYS:
            raise SweepError(f"unknown metric {key!r} (one of {', '.join(METRIC_KEYS)})")
        run = self._runs.get(n)
        return run.history.series[key].points(max_points) if run else []

    def lr_plan(self, n: int, points: int = 200) -> list[tuple[int, float]]:
        run = self._runs.get(n)
        if run is None:
            return []
        return planned_lrs(run.params, run.total or total_steps(run.params, len(self.data.train)), points)

    def events_since(self, seq: int = 0) -> list[Event]:
        return self.events.since(seq)

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        return self.events.subscribe(fn)

    def best(self) -> TrialSnapshot | None:
        snap = self.snapshot()
        return self.trial(snap.best_trial) if snap.best_trial is not None else None

    # -- scheduler -----------------------------------------------------------------------------
    def _occupied(self) -> int:
        free_paused = self.preset.study.paused_frees_slot
        # A paused trial told to resume holds its slot from the request on, before its thread wakes.
        return sum(1 for r in self._runs.values()
                   if r.state == "running" or (r.state == "paused" and (not free_paused or not r.control.paused)))

    def _can_start_more(self) -> bool:
        return self._halted is None and (bool(self._queue) or self._budget_left())

    def _timed_out(self) -> bool:
        t = self.preset.study.timeout
        return t is not None and time.time() - self._started_at > t

    def _budget_left(self) -> bool:
        return self._sampled < self.preset.study.n_trials and not self._timed_out()

    def _schedule_loop(self) -> None:
        """Keeps up to `concurrency` trials running. Idle (done) once the budget is spent and nothing runs, but
        it stays up until stop(): a fork or enqueue after that starts again."""
        while True:
            try:
                with self._cond:
                    action = self._next_action()
                # Outside _cond: listeners (headless printing, the UI) and a sampler's ask (GP: seconds) must
                # never hold up the UI's reads, nor take locks in the opposite order.
                if action == "stop":
                    return
                if action == "finished":
                    why = f"halted: {self._halted}" if self._halted else "budget spent"
                    self.events.emit("sweep_finished", None, f"sweep finished: {why}")
                    continue
                self._start_next()
            except Exception as e:  # the sampler or the storage broke: start no more trials; never die silently
                self._halt(e)

    def _next_action(self) -> str:
        """Under _cond: wait until a trial can start ("start"), the sweep just finished, or it is stopping."""
        while not self._stopping:
            room = self._occupied() < self._concurrency
            if room and self._resume_pending:
                run = self._runs.get(self._resume_pending.pop(0))
                if run is not None and run.active:
                    run.control.resume()
                continue
            if room and self._can_start_more():
                self._set_done(False)
                return "start"
            # A run counts until its thread is reaped: an OOM retry is queued after the trial has ended.
            idle = all(r.reaped or r.thread is None for r in self._runs.values())
            if idle and not self._can_start_more() and not self._done.is_set():
                self._set_done(True)
                return "finished"
            self._cond.wait(timeout=1.0)
        return "stop"

    def _start_next(self) -> None:
        """Ask Optuna (enqueued WAITING trials come first) and start a thread for the trial."""
        with self.study_lock:
            if self._stopping:  # stop() came after the scheduler decided: do not take a trial it would strand
                return
            self._asking = None  # set by the sampler's before_trial hook (_track_asks) once the trial exists
            trial = self.study.ask()
            attrs = trial.user_attrs
            origin = attrs.get("origin")
            if origin is None:
                origin = "sampler"
                trial.set_user_attr("origin", origin)
        if origin == "sampler":
            self._sampled += 1
        overrides = attrs.get("overrides", {})
        try:
            with self.study_lock:
                params = suggest_params(trial, self.preset, overrides)
        except (ValidationError, ValueError) as e:
            with self.study_lock:
                trial.set_user_attr("error", f"invalid params: {e}")
                self.study.tell(trial, state=TrialState.FAIL)
            with self._cond:
                self._queue.pop(trial.number, None)
            self.events.emit("failed", trial.number, f"trial {trial.number} failed: invalid params: {e}")
            return
        resume_from = None
        if origin == "fork":
            resume_from = ckpt.checkpoint_dir(self._trial_dir(trial.number), attrs["fork_step"])
        run = TrialRun(
            number=trial.number, trial=trial, params=params, searched=dict(trial.params), overrides=overrides,
            trial_dir=self._trial_dir(trial.number), origin=origin, by_user=_by_user(attrs),
            user_attrs={**attrs, "origin": origin},
            parent=attrs.get("parent_trial"),
            fork_step=attrs.get("fork_step"), resume_from=resume_from,
        )
        parent = self._runs.get(run.parent) if run.parent is not None else None
        if parent is not None:
            run.history.copy_prefix(parent.history, until=run.fork_step)
        with self._cond:
            self._queue.pop(trial.number, None)
            self._launch(run)
        self._asking = None

    def _track_asks(self, sampler: optuna.samplers.BaseSampler) -> optuna.samplers.BaseSampler:
        """Record which trial an ask created (Optuna calls before_trial as soon as it exists), so a failing ask
        fails exactly that trial: with a shared --storage, other RUNNING trials may be another process's."""
        real = sampler.before_trial

        def before_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            self._asking = (trial.number, trial._trial_id)
            real(study, trial)

        sampler.before_trial = before_trial  # type: ignore[method-assign]
        return sampler

    def _halt(self, e: Exception) -> None:
        """Starting a trial failed outside any trial (e.g. the sampler): fail the trial the ask had created, if
        any, and start no more; running trials finish. Must not raise: the scheduler thread calls it."""
        msg = error_line(e)
        with self._cond:
            self._halted = msg
            self._cond.notify_all()
        asked, self._asking = self._asking, None
        if asked is not None and asked[0] not in self._runs:
            number, trial_id = asked
            try:
                with self.study_lock:
                    # The storage, not optuna.Trial: building a Trial would run the failing sampler again.
                    self.study._storage.set_trial_user_attr(trial_id, "error", msg)
                    self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            except Exception:  # the storage itself is broken: the halt below still has to happen
                log.warning("could not mark trial %s failed after: %s", number, msg)
            with self._cond:
                self._queue.pop(number, None)
        try:
            self.events.emit("sweep_halted", None, f"sweep cannot start more trials: {msg}", error=msg)
        except Exception:
            log.warning("sweep halted: %s", msg)

    def _launch(self, run: TrialRun) -> None:
        runner = TrialRunner(self, run)
        run.runner = runner
        run.thread = threading.Thread(target=runner, name=f"trial-{run.number}", daemon=True)
        self._runs[run.number] = run
        run.thread.start()

    def _trial_finished(self, run: TrialRun) -> None:
        with self._cond:
            run.reaped = True
            self._cond.notify_all()

    def _trial_dir(self, n: int) -> Path:
        return self.run_dir / "trials" / str(n)

    def _active(self, n: int) -> TrialRun:
        run = self._runs.get(n)
        if run is None:
            raise SweepError(f"no trial {n} in this sweep")
        if not run.active:
            raise SweepError(f"trial {n} is {run.state}, not running or paused")
        return run

    # -- resume after a crash ------------------------------------------------------------------
    def _reload(self) -> None:
        """Rebuild records of finished trials and restart the ones a dead process left RUNNING."""
        paused = _paused_at_death(read_jsonl(self.run_dir / "events.jsonl"))
        for t in self.study.get_trials(deepcopy=False):
            origin = t.user_attrs.get("origin", "sampler")
            if t.state == TrialState.WAITING:
                self._queue[t.number] = _waiting_snapshot(t)
                continue
            if origin == "sampler" and not t.user_attrs.get("interrupted_before_start"):
                self._sampled += 1  # one stopped before it started is queued again (below) and counts then
            overrides = t.user_attrs.get("overrides", {})
            try:
                params = TrialParams.model_validate({**self.preset.params.model_dump(), **t.params, **overrides})
            except ValidationError:
                continue
            trial_dir = self._trial_dir(t.number)
            run = TrialRun(number=t.number, trial=None, params=params, searched=dict(t.params), overrides=overrides,
                           trial_dir=trial_dir, origin=origin, by_user=_by_user(t.user_attrs),
                           user_attrs=dict(t.user_attrs), parent=t.user_attrs.get("parent_trial"),
                           fork_step=t.user_attrs.get("fork_step"))
            last_ckpt = ckpt.list_checkpoints(trial_dir)
            until = last_ckpt[-1].step if (t.state == TrialState.RUNNING and last_ckpt) else None
            if t.state == TrialState.RUNNING and not last_ckpt:
                until = 0
            _load_history(run, trial_dir, until, self._runs)
            run.checkpoints = last_ckpt
            run.total = total_steps(params, len(self.data.train))
            if t.state == TrialState.RUNNING:
                run.trial = optuna.Trial(self.study, t._trial_id)
                run.resume_from = last_ckpt[-1].path if last_ckpt else None
                run.has_report = bool(t.intermediate_values)
                if t.number in paused:
                    run.control.pause()
                self.events.emit("resuming", t.number, f"trial {t.number} resumes from "
                                 + (f"checkpoint step {last_ckpt[-1].step}" if last_ckpt else "step 0 (no checkpoint)"))
                self._launch(run)
            else:
                run.state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(t.state, "fail")
                run.stopped_by_user = bool(t.user_attrs.get("stopped_by_user"))
                run.error = t.user_attrs.get("error")
                run.started_at = t.datetime_start.timestamp() if t.datetime_start else None
                run.finished_at = t.datetime_complete.timestamp() if t.datetime_complete else None
                self._runs[t.number] = run
        self._continue_interrupted()

    def _continue_interrupted(self) -> None:
        """Trials a clean stop interrupted are finished in Optuna (immutable): continue each as a fork of itself
        from its stop checkpoint, or run it again when it was stopped before its first step; once each (user attr
        `continues`)."""
        trials = self.study.get_trials(deepcopy=False)
        done = {t.user_attrs.get("continues") for t in trials}
        for t in trials:
            if t.state != TrialState.PRUNED or t.number in done or t.number not in self._runs:
                continue
            run, a = self._runs[t.number], t.user_attrs
            path = a.get("interrupted_checkpoint")
            if path and Path(path).is_dir():
                source = ckpt.CheckpointInfo(a["interrupted_at_step"], Path(path), None, 0.0)
                child = self._enqueue(run.params, {"origin": "fork", "parent_trial": t.number, "continues": t.number,
                                                   "fork_step": source.step, "fork_checkpoint": path,
                                                   "by_user": run.by_user}, copy_checkpoint=source)
                self.events.emit("forked", child, f"trial {child} continues interrupted trial {t.number} "
                                 f"from step {source.step}", parent=t.number, step=source.step)
            elif a.get("interrupted_before_start"):
                child = self._enqueue(run.params, {"origin": run.origin, "continues": t.number,
                                                   "by_user": run.by_user})
                self.events.emit("enqueued", child, f"trial {child} re-runs trial {t.number} (stopped before "
                                 "its first step)", params=run.searched)


def _by_user(attrs: dict[str, Any]) -> bool:
    """Runs made before the attr existed: enqueued and forked trials were the user's."""
    return bool(attrs.get("by_user", attrs.get("origin") in ("enqueue", "fork")))


def _waiting_snapshot(t: optuna.trial.FrozenTrial) -> TrialSnapshot:
    """A queued (enqueued or forked) trial: its fixed params and lineage are known before it starts."""
    a = t.user_attrs
    return TrialSnapshot(number=t.number, state="waiting", step=0, total_steps=None,
                         params=dict(t.system_attrs.get("fixed_params", {})), overrides=dict(a.get("overrides", {})),
                         parent=a.get("parent_trial"), fork_step=a.get("fork_step"), origin=a.get("origin", "sampler"),
                         user_attrs=dict(a))


def _load_history(run: TrialRun, trial_dir: Path, until: int | None, runs: dict[int, TrialRun]) -> None:
    if run.parent is not None and run.parent in runs and run.fork_step is not None:
        run.history.copy_prefix(runs[run.parent].history, until=run.fork_step)
    rows: list[dict[str, Any]] = []
    for row in read_jsonl(trial_dir / "metrics.jsonl"):
        step = row.get("step", 0)
        if rows and "loss" in row and step <= rows[-1].get("step", 0):
            # A resumed trial re-runs the steps after its checkpoint: the later lines win.
            rows = [r for r in rows if r.get("step", 0) < step]
        rows.append(row)
    for row in rows:
        if until is not None and row.get("step", 0) > until:
            continue
        run.history.record(row)
        run.last.update({k: v for k, v in row.items() if v is not None and k != "time"})
        if row.get("eval_loss") is not None:
            run.best_eval = row["eval_loss"] if run.best_eval is None else min(run.best_eval, row["eval_loss"])
        run.step = max(run.step, int(row.get("step", 0)))
        if row.get("mem_bytes") is not None:
            run.peak_mem = max(run.peak_mem or 0, int(row["mem_bytes"]))


def _paused_at_death(events: list[dict[str, Any]]) -> set[int]:
    paused: set[int] = set()
    for e in events:
        if e.get("event") == "paused":
            paused.add(e["trial"])
        elif e.get("event") in ("resumed", "killed", "complete", "pruned", "failed"):
            paused.discard(e["trial"])
    return paused


def _stage_tree(src: Path, root: Path) -> Path:
    """Hard-link a checkpoint into a staging dir under `root` (no copy of the bytes; it survives the parent's
    pruning), to be renamed into the child's dir."""
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=root)) / src.name
    try:
        shutil.copytree(src, tmp, copy_function=_link_or_copy)
    except OSError as e:
        shutil.rmtree(tmp.parent, ignore_errors=True)
        raise SweepError(f"fork: cannot copy checkpoint {src}: {e.strerror or e}") from None
    return tmp


def _link_or_copy(src: str, dst: str) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


__all__ = ["PresetError", "Sweep", "SweepError"]
