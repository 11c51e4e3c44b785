"""The scheduler: one thread that drains one command queue and decides which trial runs when (slots, queued
resumes, interrupted trials first, then enqueued ones, then the sampler's proposals within the budget)."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState as OptunaState
from pydantic import ValidationError

from tui_tuner.engine.gpu_pool import GpuPool
from tui_tuner.engine.lifecycle import ACTIVE, FINISHED, Lifecycle
from tui_tuner.engine.lifecycle import TrialState as S
from tui_tuner.engine.placement import Wait
from tui_tuner.engine.promotion import PROMOTED_ATTR, RUNG_ATTR, Promotion, Rung
from tui_tuner.engine.study_gateway import ELAPSED_ATTR, StorageError, StudyGateway
from tui_tuner.engine.trial import TrialRegistry, TrialRun
from tui_tuner.format import error_line, fmt_loss
from tui_tuner.params import TrialParams
from tui_tuner.preset import Preset
from tui_tuner.training.checkpoint_files import list_checkpoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """What reaches the scheduler: `kind` is wake | concurrency | resume | unqueue | cancel | halt | stop."""

    kind: str
    trial: int | None = None
    value: int | None = None  # concurrency: the new value; resume: the trial's pause token when it was asked
    reason: str | None = None  # halt: why


WAKE = Command("wake")
GPU_RECHECK_S = 2.0  # how often free GPU memory is re-read: other processes free memory without telling us


class SchedulerHost(Protocol):
    preset: Preset
    gateway: StudyGateway
    lifecycle: Lifecycle
    registry: TrialRegistry
    gpu_pool: GpuPool | None
    promotion: Promotion | None

    def emit(self, kind: str, trial: int | None, message: str, **data: Any) -> Any: ...
    def prepare_asked(self, trial: optuna.Trial, attrs: dict[str, Any], params: TrialParams) -> TrialRun: ...
    def launch(self, run: TrialRun) -> None: ...


class Scheduler:
    """Only its own thread changes its fields (`concurrency`, `sampled`, the queues), as in Ray Tune's single
    controller loop; other threads send Commands and read those fields (plain attribute reads). Every state move
    of a trial sends WAKE (Lifecycle's `wake`), so nothing waits on a polling timeout."""

    def __init__(self, host: SchedulerHost, concurrency: int):
        self.host = host
        self.concurrency = concurrency
        self.requested_concurrency = concurrency  # what clients see at once, before the thread applies it
        self.sampled = 0  # sampler-proposed trials so far: study.n_trials is their budget
        self.halted: str | None = None  # why no more trials can start (the sampler broke); running ones go on
        self.finished = threading.Event()  # budget spent and nothing running (cleared when new work arrives)
        self.finished_at: float | None = None
        self.started_at = time.time()
        self.time_used = 0.0  # seconds the study ran in earlier sessions: study.timeout counts on from there
        self._relaunch: list[TrialRun] = []  # interrupted trials to continue, first in line
        self._placing: list[TrialRun] = []  # asked or interrupted trials no GPU has room for yet, in order
        self._resume_pending: dict[int, int | None] = {}  # resumes waiting for a slot (paused_frees_slot), in
        # order, each with its pause token
        self._q: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Held across "is the sweep stopped? launch": stop() sets _stopped under it, so a trial whose ask outlived
        # stop()'s join is never launched after the sweep collected the threads to stop.
        # An RLock: the launch's "starting" event is emitted under it, and a listener may call stop() on this thread.
        self._launch_lock = threading.RLock()

    # -- any thread ----------------------------------------------------------------------------
    def send(self, cmd: Command) -> None:
        if cmd.kind == "concurrency" and cmd.value is not None:
            self.requested_concurrency = cmd.value
        self._q.put(cmd)

    def wake(self) -> None:
        self._q.put(WAKE)

    def start(self, relaunch: list[TrialRun]) -> None:
        if self._stopped:  # the sweep was stopped while it was opening: nothing may start
            return
        self._relaunch = list(relaunch)
        self.started_at = time.time()
        self._q.put(WAKE)  # the first look at the slots
        self._thread = threading.Thread(target=self._loop, name="tui-tuner-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """No trial starts after this returns (one being asked for right now ends interrupted, never launched)."""
        with self._launch_lock:
            self._stopped = True
        self._q.put(Command("stop"))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        for run in self._placing:
            if run.state is S.WAITING:  # asked, waiting for a GPU: RUNNING in the study, resume starts it
                self.host.lifecycle.move(run, S.INTERRUPTED, f"trial {run.number} interrupted by the sweep stop "
                                         "while it waited for GPU memory")

    @property
    def alive(self) -> bool:
        """Its thread is still running (a stop whose join timed out: it may still write to the study)."""
        t = self._thread
        return t is not None and t is not threading.current_thread() and t.is_alive()

    def mark_finished(self, done: bool) -> None:
        """Elapsed time stops at the finish and runs again if a new trial reopens the sweep; once stopped, the
        sweep stays finished (an enqueue racing the stop must not make wait() block forever)."""
        if not done and self._stopped:
            return
        if done:
            self.finished_at = self.finished_at or time.time()
            self.finished.set()
        else:
            self.finished_at = None
            self.finished.clear()

    # -- the scheduler thread ------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                cmd = self._q.get(timeout=self._time_left())
            except queue.Empty:  # the study's timeout just ran out: the budget is spent
                cmd = WAKE
            cmds = [cmd]
            while not self._q.empty():
                cmds.append(self._q.get_nowait())
            if any(c.kind == "stop" for c in cmds):
                return
            try:
                for c in cmds:
                    self._apply(c)
                self._decide_promotion()
                self._fill_slots()
                self._check_finished()
            except Exception as e:  # the sampler or the storage broke: start no more trials; never die silently
                self._halt(e)

    def _time_left(self) -> float | None:
        t = self.host.preset.study.timeout
        left = None if t is None else t - self.elapsed()
        recheck = GPU_RECHECK_S if self.host.gpu_pool is not None else None
        if left is None or left <= 0 or self.sampled >= self.host.preset.study.n_trials:
            return recheck  # nothing to wait for but commands (and GPU memory freeing)
        return min(left + 0.01, recheck or math.inf)

    def _apply(self, c: Command) -> None:
        h = self.host
        if c.kind == "concurrency" and c.value is not None:
            self.concurrency = c.value
            h.gateway.set_study_attr(h.gateway.concurrency_attr, c.value)
            h.emit("concurrency", None, f"concurrency set to {c.value}", concurrency=c.value)
        elif c.kind == "resume" and c.trial is not None:
            self._resume(c.trial, c.value)
        elif c.kind == "unqueue":
            self._resume_pending.pop(c.trial, None)  # type: ignore[arg-type]
        elif c.kind == "cancel" and c.trial is not None:
            self._cancel(c.trial)
        elif c.kind == "halt" and c.reason is not None:
            self._halt_on_storage(c.reason)

    def must_wait_for_slot(self, run: TrialRun) -> bool:
        """A resume of `run` now would exceed the concurrency: paused trials free their slot and it is paused
        for real (a pause its thread has not reached yet still holds the slot) while every slot is taken."""
        return (self.host.preset.study.paused_frees_slot and run.control.paused and run.state is S.PAUSED
                and self.occupied() >= self.concurrency)

    def _resume(self, n: int, token: int | None) -> None:
        run = self.host.registry.get(n)
        if run is None or not run.active or (token is not None and token != run.control.pause_token):
            return  # paused again since this resume was asked: the later pause wins
        if not self.must_wait_for_slot(run):
            run.control.resume(token)
        elif n not in self._resume_pending:
            self._resume_pending[n] = token
            self.host.emit("resume_queued", n, f"trial {n} resumes when a slot frees (concurrency {self.concurrency})")

    def _cancel(self, n: int) -> None:
        h = self.host
        run = h.registry.get(n)
        if run is None:
            return
        if run.state is S.WAITING:
            self._placing = [r for r in self._placing if r.number != n]
            h.gateway.cancel_waiting(n)
            run.user_attrs["cancelled_by_user"] = True
            h.lifecycle.move(run, S.CANCELLED, f"trial {n} cancelled by the user before it ran")
        elif run.state is S.PARKED:  # promotion: waiting at its rung, no thread: told here
            self._tell_ended(run, S.KILLED, OptunaState.PRUNED, {"stopped_by_user": True, "stopped_at_step": run.step},
                             f"trial {n} killed by the user at step {run.step} (parked)")
        elif run.active:  # it started between the request and now: the user's intent was to end it
            h.emit("kill_requested", n, f"kill of trial {n} requested at step {run.step}")
            run.control.kill()

    # -- promotion ---------------------------------------------------------------------------------
    def _decide_promotion(self) -> None:
        """Once no sampler trial is still on its way to the first rung and the sampler budget is spent, the
        parked trials in the top_k (of every trial that reached the rung, by its eval there) continue from their
        rung checkpoints under their own numbers; the other parked ones end PRUNED, not promoted."""
        promo, h = self.host.promotion, self.host
        if promo is None or (self.halted is None and self.budget_left()):
            return
        runs = h.registry.all()
        # A promoted trial stays parked until a slot frees for it: it is decided already.
        waiting = {r.number for r in runs if r.state is S.PARKED and not r.user_attrs.get(PROMOTED_ATTR)}
        parked = [r for r in runs if r.number in waiting]
        on_the_way = [r for r in runs if r.origin == "sampler" and not r.user_attrs.get(PROMOTED_ATTR)
                      and r.state not in FINISHED and r.state is not S.PARKED]
        if not parked or on_the_way:
            return
        rungs = [Rung(r.number, float(r.user_attrs[RUNG_ATTR]), r.number in waiting) for r in runs
                 if RUNG_ATTR in r.user_attrs and r.origin == "sampler"]
        d = promo.decide(rungs)
        t1, total = promo.t1, parked[0].total
        for rank, n in enumerate(d.promote, start=1):
            run = h.registry.get(n)
            assert run is not None
            h.gateway.set_attrs(run.trial, {PROMOTED_ATTR: True, "promoted_rank": rank})
            run.user_attrs.update({PROMOTED_ATTR: True, "promoted_rank": rank})
            ckpts = list_checkpoints(run.trial_dir)
            run.resume_from = ckpts[-1].path if ckpts else None
            self._relaunch.append(run)
        for n, rank in d.drop:
            run = h.registry.get(n)
            assert run is not None
            rung = fmt_loss(run.user_attrs.get(RUNG_ATTR))  # absent when rank is 0 (no finite eval)
            why = (f"not promoted: rank {rank} of {d.ranked} at step {t1} (eval {rung}); "
                   f"the best {len(d.promote)} continue" if rank else "not promoted: no finite eval at the rung")
            self._tell_ended(run, S.PRUNED, OptunaState.PRUNED, {"pruned_at_step": t1, "pruned_reason": why},
                             f"trial {n} pruned at step {t1}: {why}")
        if d.promote or d.drop:
            who = (f"trials {', '.join(map(str, d.promote))} continue" if len(d.promote) > 1
                   else f"trial {d.promote[0]} continues" if d.promote else "no trial continues")
            h.emit("promotion", None, f"promotion at step {t1}: {who} to step {total} (top {promo.conf.top_k} of "
                   f"{d.ranked})",
                   promoted=d.promote, dropped=[n for n, _ in d.drop])

    def _tell_ended(self, run: TrialRun, to: S, told: OptunaState, attrs: dict[str, Any], message: str) -> None:
        """End a trial that has no thread (parked): its attrs and tell, then the move."""
        h = self.host
        if run.trial is not None:
            h.gateway.set_attrs(run.trial, attrs)
            h.gateway.tell(run.trial, told)
        run.user_attrs.update(attrs)
        run.told = True
        h.lifecycle.move(run, to, message)

    def occupied(self) -> int:
        """Slots taken now (a read other threads make too: snapshots show it beside the concurrency)."""
        free_paused = self.host.preset.study.paused_frees_slot
        with self.host.registry.lock:
            # A paused trial told to resume holds its slot from the request on, before its thread wakes.
            return sum(1 for r in self.host.registry.all()
                       if r.state in (S.STARTING, S.RUNNING)
                       or (r.state is S.PAUSED and (not free_paused or not r.control.paused)))

    def budget_left(self) -> bool:
        s = self.host.preset.study
        timed_out = s.timeout is not None and self.elapsed() > s.timeout
        return self.sampled < s.n_trials and not timed_out

    def _queued(self) -> bool:
        return any(r.state is S.WAITING for r in self.host.registry.all())

    def can_start_now(self) -> bool:
        """A trial could start (a free slot and work for it); a read other threads may make."""
        return not self._stopped and self.occupied() < self.concurrency and (self._can_start_more()
                                                                              or bool(self._relaunch))

    def _can_start_more(self) -> bool:
        return self.halted is None and (self._queued() or self.budget_left())

    def _fill_slots(self) -> None:
        free_paused = self.host.preset.study.paused_frees_slot
        while not self._stopped:
            room = self.occupied() < self.concurrency
            if room and self._resume_pending:
                n = next(iter(self._resume_pending))
                token = self._resume_pending.pop(n)
                run = self.host.registry.get(n)
                if run is not None and run.active:
                    run.control.resume(token)
                continue
            if self._placing:  # first in line: nothing starts before it, or small trials would starve it
                if not room or not self._launch(self._placing[0]):
                    return
                self._placing.pop(0)
                continue
            if self._relaunch and (room or (free_paused and self._relaunch[0].control.paused)):
                self.mark_finished(False)
                self._launch(self._relaunch.pop(0))
                continue
            if room and self._can_start_more():
                self.mark_finished(False)
                if self._start_next():
                    continue
            return

    def _check_finished(self) -> None:
        runs = self.host.registry.all()
        busy = any(r.state in ACTIVE or r.state is S.PARKED or (r.thread is not None and not r.reaped) for r in runs)
        if self.host.gpu_pool is not None:
            self.host.gpu_pool.refresh(runs)  # the System panel's view of free memory
        if busy or self._placing or self._relaunch or self._can_start_more() or self.finished.is_set():
            return
        self.mark_finished(True)
        if self.host.preset.study.timeout is not None:
            self.record_elapsed()
        why = f"halted: {self.halted}" if self.halted else "budget spent"
        self.host.emit("sweep_finished", None, f"sweep finished: {why}")

    def _start_next(self) -> bool:
        """Ask Optuna (enqueued WAITING trials come first) and launch the trial; False when there was none (the
        study's budget is spent: other workers on it may have spent it)."""
        h = self.host
        asked = h.gateway.ask(h.preset.study.n_trials)
        self.sampled = max(self.sampled, h.gateway.sampled)
        if asked is None:
            self.sampled = max(self.sampled, h.preset.study.n_trials)
            return False
        trial, attrs = asked
        # Any other error of suggest is the sampler's: it reaches _loop, whose halt fails this trial.
        invalid: ValidationError | None = None
        try:
            params = h.gateway.suggest(trial, attrs.get("overrides", {}))
        except ValidationError as e:
            invalid = e
        if attrs["origin"] == "sampler":
            self.sampled += 1  # after suggest: a trial the sampler failed to create is not from the budget
        if invalid is not None:
            self._fail_invalid(trial, attrs, invalid)
            return True
        self._launch(h.prepare_asked(trial, attrs, params))
        return True

    def elapsed(self) -> float:
        """Seconds the study has run, over every session of the run (what study.timeout limits)."""
        return self.time_used + time.time() - self.started_at

    def record_elapsed(self) -> None:
        """Keep the time used in the study, so a resume goes on counting it (written at each launch, at the
        finish and at a stop: a crash loses at most the time since the last of these)."""
        self.host.gateway.set_study_attr(ELAPSED_ATTR, round(self.elapsed(), 3))

    def _launch(self, run: TrialRun) -> bool:
        """Place and start `run`; False when no GPU has room for it (it then waits first in line)."""
        if not self._stopped and not self._placed(run):
            return False
        if self.host.preset.study.timeout is not None:
            self.record_elapsed()
        with self._launch_lock:
            if not self._stopped:
                self.host.launch(run)
                return True
        if run.state is S.WAITING:  # asked while the sweep stopped: RUNNING in the study, resume starts it
            self.host.lifecycle.move(run, S.INTERRUPTED, f"trial {run.number} interrupted by the sweep stop "
                                     "before it started")
        return True

    def _placed(self, run: TrialRun) -> bool:
        """Give `run` a GPU (CPU sweeps: nothing to do); else keep it waiting, visibly, first in line."""
        pool = self.host.gpu_pool
        if pool is None:
            return True
        before = run.wait_reason
        got = pool.decide(run, self.host.registry.all())
        if not isinstance(got, Wait):
            return True
        if run not in self._placing:
            self._placing.append(run)
        if got.reason != before:
            run.version += 1
            self.host.emit("gpu_wait", run.number, f"trial {run.number} {got.reason}", need=got.need,
                           most_free=got.most_free, gpu=got.on)
        return False

    def _fail_invalid(self, trial: optuna.Trial, attrs: dict[str, Any], e: Exception) -> None:
        h, msg = self.host, f"invalid params: {error_line(e)}"
        h.gateway.set_attrs(trial, {"error": msg})
        h.gateway.tell(trial, OptunaState.FAIL)
        run = h.registry.get(trial.number)
        if run is not None and run.state is S.WAITING:
            run.error = msg
            h.lifecycle.move(run, S.FAILED, f"trial {trial.number} failed: {msg}")
        else:
            h.emit("failed", trial.number, f"trial {trial.number} failed: {msg}")

    def _halt_on_storage(self, msg: str) -> None:
        """The storage failed (a trial's report or tell, or an ask): start nothing more and interrupt every
        running trial (checkpointed, left RUNNING in the study): their training was fine, and `resume` continues
        them once the storage works. Failing them would lose them for good."""
        first = self.halted is None
        self.halted = self.halted or msg
        stopped = [r for r in self.host.registry.all() if r.active]
        for r in stopped:
            r.control.stop()
        if first:
            self.host.emit("sweep_halted", None, f"sweep halted: {msg}; running trials are interrupted "
                           "(resume continues them)", error=msg, interrupted=[r.number for r in stopped])

    def _halt(self, e: Exception) -> None:
        """Starting a trial failed outside any trial (e.g. the sampler): fail the trial the ask had created, if
        any, and start no more; running trials finish. Must not raise: this thread calls it."""
        msg = error_line(e)
        if isinstance(e, StorageError):  # not the sampler's fault: nothing to fail, everything to keep
            try:
                self._halt_on_storage(str(e))
                self._check_finished()
            except Exception:
                log.warning("sweep halted: %s", e)
            return
        self.halted = msg
        number = self.host.gateway.fail_asked(msg)
        run = self.host.registry.get(number) if number is not None else None
        try:
            if run is not None and run.state is S.WAITING:
                run.error = msg
                self.host.lifecycle.move(run, S.FAILED, f"trial {number} failed: {msg}")
            self.host.emit("sweep_halted", None, f"sweep cannot start more trials: {msg}", error=msg)
            self._check_finished()
        except Exception:
            log.warning("sweep halted: %s", msg)
