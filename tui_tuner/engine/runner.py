"""One trial in its own thread: builds the fine-tune, steps it, obeys its TrialControl, reports and tells Optuna."""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import TrialState

from tui_tuner.engine.control import Killed, Stopped, TrialControl
from tui_tuner.engine.history import TrialHistory
from tui_tuner.engine.jsonl import JsonlWriter
from tui_tuner.engine.snapshot import CheckpointView, TrialSnapshot
from tui_tuner.format import error_line
from tui_tuner.params import TrialParams
from tui_tuner.training import checkpoint as ckpt
from tui_tuner.training.finetune import FineTune

if TYPE_CHECKING:
    from tui_tuner.engine.sweep import Sweep

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The train loss became NaN or infinite."""


@dataclass
class TrialRun:
    """Everything the engine knows about one trial; mutated only by its own thread (plus `control`)."""

    number: int
    trial: optuna.Trial | None
    params: TrialParams
    searched: dict[str, Any]
    overrides: dict[str, Any]
    trial_dir: Path
    origin: str = "sampler"
    by_user: bool = False  # enqueued or forked by the user: exempt from pruning unless the preset says otherwise
    parent: int | None = None
    fork_step: int | None = None
    resume_from: Path | None = None
    state: str = "running"
    step: int = 0
    total: int | None = None
    last: dict[str, float] = field(default_factory=dict)
    best_eval: float | None = None
    peak_mem: int | None = None
    own_mem: int | None = None  # weights + gradients + optimizer state of this trial alone
    device: str = ""  # where it trains: "cpu", "cuda:0"
    error: str | None = None
    stopped_by_user: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    checkpoints: list[ckpt.CheckpointInfo] = field(default_factory=list)
    history: TrialHistory = field(default_factory=TrialHistory)
    control: TrialControl = field(default_factory=TrialControl)
    thread: threading.Thread | None = None
    version: int = 0
    has_report: bool = False
    ft: FineTune | None = None
    start_step: int = 0  # the step it (re)started from: a stop before any new step writes no new checkpoint
    reaped: bool = False  # its thread has fully ended (an OOM retry is queued before this is set)
    runner: Any = None
    told: bool = False
    user_attrs: dict[str, Any] = field(default_factory=dict)  # a copy of Optuna's, so reads never take study_lock

    def snapshot(self) -> TrialSnapshot:
        last = self.last
        return TrialSnapshot(
            number=self.number, state=self.state, step=self.step, total_steps=self.total,
            params=dict(self.searched), overrides=dict(self.overrides),
            loss=last.get("loss"), eval_loss=last.get("eval_loss"), best_eval_loss=self.best_eval,
            lr=last.get("lr"), grad_norm=last.get("grad_norm"), tokens_per_s=last.get("tokens_per_s"),
            mem_bytes=int(last["mem_bytes"]) if "mem_bytes" in last else None, peak_mem_bytes=self.peak_mem,
            own_mem_bytes=self.own_mem, device=self.device,
            parent=self.parent, fork_step=self.fork_step, origin=self.origin,
            stopped_by_user=self.stopped_by_user, pause_requested=self.control.paused, error=self.error,
            started_at=self.started_at,
            finished_at=self.finished_at,
            checkpoints=tuple(CheckpointView(c.step, c.eval_loss, str(c.path)) for c in self.checkpoints),
            user_attrs=dict(self.user_attrs), version=self.version,
        )

    @property
    def active(self) -> bool:
        return self.state in ("running", "paused")


class TrialRunner:
    """The body of a trial thread. Every Optuna call for this trial happens here, under the sweep's study lock."""

    def __init__(self, sweep: Sweep, run: TrialRun):
        self.sweep, self.run = sweep, run
        self.events = sweep.events
        self.metrics = JsonlWriter(run.trial_dir / "metrics.jsonl")

    # -- thread entry ------------------------------------------------------------------------
    def __call__(self) -> None:
        run, sw = self.run, self.sweep
        try:
            try:
                self._train()
            except Killed:
                self._finish_pruned(user=True)
            except Stopped:
                self._finish_stopped()
            except optuna.TrialPruned:
                self._finish_pruned(user=False)
            except Exception as e:  # a failing trial must not take the sweep down
                if sw.stopping:  # e.g. interpreter shutdown under a trial still building: not the trial's fault
                    self._finish_stopped()
                else:
                    self._finish_failed(e)
        except Exception as e:  # a handler itself failed (disk gone, storage error): still end it, told
            self._last_resort(e)
        finally:
            if run.active:  # never leave the trial looking alive
                run.state, run.finished_at = "fail", time.time()
            if run.ft is not None:
                run.ft.close()
                run.ft = None
            self.metrics.close()
            run.control.fail_pending(RuntimeError(f"trial {run.number} has finished"))
            sw._trial_finished(run)

    def _train(self) -> None:
        run, sw, p = self.run, self.sweep, self.sweep.preset
        run.started_at = time.time()
        # OpenMP's thread count is per calling thread: set it here, not only in the thread that built the sweep.
        torch.set_num_threads(p.device.threads_per_trial)
        weights = str(run.resume_from) if (run.resume_from and p.model.method == "full") else None
        ft = FineTune(
            p.model.name, p.model.method, run.params, sw.data, p.device.type, p.device.precision,
            weights_dir=weights, trust_remote_code=p.model.trust_remote_code,
        )
        run.ft = ft
        run.device = str(ft.device)
        if run.params.batch_size is None:
            self.events.emit("batch_size_rule", run.number, f"trial {run.number}: batch_size unset: using "
                             f"{ft.batch_size} (~0.2% of {len(sw.data.train)} training examples, at most 256)")
        if run.resume_from:
            ckpt.restore(ft, run.resume_from)
            ft.apply_params(run.params)  # a fork's overrides win over what the optimizer state carried
        run.step, run.total, run.start_step = ft.step_count, ft.total_steps, ft.step_count
        run.checkpoints = ckpt.list_checkpoints(run.trial_dir)
        where = f" from step {ft.step_count}" if run.resume_from else ""
        self.events.emit("started", run.number, f"trial {run.number} started{where}", params=run.searched)
        self._bump()
        interval = run.params.eval_interval
        ck_every = p.checkpoints.interval
        while not ft.done:
            run.control.boundary(self._on_pause, self._on_resume)
            m = ft.step()
            if not math.isfinite(m.loss):
                raise Diverged(f"train loss is {m.loss} at step {m.step} (lr={m.lr:.3g}): diverged")
            row = {"step": m.step, "loss": m.loss, "lr": m.lr, "grad_norm": m.grad_norm,
                   "tokens_per_s": m.tokens_per_s, "step_time": m.step_time, "mem_bytes": m.mem_bytes,
                   "time": time.time()}
            self.metrics.write(row)
            run.history.record(row)
            run.last.update(row)
            run.step = m.step
            run.peak_mem = max(run.peak_mem or 0, m.mem_bytes)
            if run.own_mem is None:  # the optimizer's state exists from the first step on
                run.own_mem = ft.own_bytes()
            eval_loss, best_before = None, run.best_eval
            if m.step % interval == 0 or ft.done:
                eval_loss = self._evaluate()
                if not math.isfinite(eval_loss):
                    raise Diverged(f"eval loss is {eval_loss} at step {m.step}: diverged, or the eval split has "
                                   "no target tokens (check data.max_length against the prompts' length)")
                if not ft.done:
                    self._maybe_prune()
            periodic = bool(ck_every) and m.step % ck_every == 0
            new_best = (p.checkpoints.keep_best and eval_loss is not None
                        and (best_before is None or eval_loss < best_before))
            if (periodic or new_best) and not ft.done:  # the final step is saved below in any case
                self._checkpoint(eval_loss, "periodic" if periodic else "best")
            self._bump()
        self._checkpoint(run.last.get("eval_loss"), "final")
        if not math.isfinite(run.last.get("eval_loss", math.nan)):
            raise Diverged(f"final eval loss is {run.last.get('eval_loss')} at step {run.step}")
        self._tell(TrialState.COMPLETE, run.last["eval_loss"])
        self._end("complete", f"trial {run.number} completed: eval loss {run.last['eval_loss']:.4f}")

    # -- pieces --------------------------------------------------------------------------------
    def _evaluate(self) -> float:
        run, ft = self.run, self.run.ft
        assert ft is not None
        value = ft.evaluate()
        row = {"step": ft.step_count, "eval_loss": value, "time": time.time()}
        self.metrics.write(row)
        run.history.record(row)
        run.last["eval_loss"] = value
        if math.isfinite(value):
            run.best_eval = value if run.best_eval is None else min(run.best_eval, value)
            if run.trial is not None:
                with self.sweep.study_lock:
                    run.trial.report(value, ft.step_count)
                run.has_report = True
        return value

    def _maybe_prune(self) -> None:
        run = self.run
        if run.trial is None or run.control.paused:
            return
        if run.by_user and not self.sweep.preset.study.prune_user_trials:
            return  # a trial the user asked for runs to its end unless the preset says otherwise
        with self.sweep.study_lock:
            prune = run.trial.should_prune()
        if prune:
            raise optuna.TrialPruned(f"pruned at step {run.step} by {self.sweep.preset.study.pruner}")

    def _checkpoint(self, eval_loss: float | None, kind: ckpt.CheckpointKind) -> ckpt.CheckpointInfo | None:
        """Save; on a disk or permission error keep the previous good checkpoint and log it loudly."""
        run, conf = self.run, self.sweep.preset.checkpoints
        assert run.ft is not None
        try:
            info = ckpt.save(run.ft, run.trial_dir, eval_loss, kind)
            ckpt.prune_checkpoints(run.trial_dir, conf.keep, conf.keep_best)
        except Exception as e:  # torch.save and safetensors raise RuntimeError-like errors on a full disk, too
            self.events.emit("checkpoint_failed", run.number, f"trial {run.number}: checkpoint at step "
                             f"{run.step} failed: {error_line(e)}; previous checkpoint kept")
            return None
        run.checkpoints = ckpt.list_checkpoints(run.trial_dir)
        self.events.emit("checkpoint", run.number, f"trial {run.number}: checkpoint at step {info.step}",
                         step=info.step, path=str(info.path))
        self._bump()
        return info

    def checkpoint_now(self) -> ckpt.CheckpointInfo:
        """Runs on the trial thread (via TrialControl.submit)."""
        info = self._checkpoint(self.run.last.get("eval_loss") if self._evaluated_at_step() else None, "now")
        if info is None:
            raise OSError(f"trial {self.run.number}: checkpoint failed (see events.jsonl)")
        return info

    def _evaluated_at_step(self) -> bool:
        last = self.run.history.series["eval_loss"].last()
        return last is not None and last[0] == self.run.step

    def _tell(self, state: TrialState, value: float | None = None) -> None:
        trial = self.run.trial
        if trial is None:
            return
        with self.sweep.study_lock:
            if state == TrialState.COMPLETE:
                self.sweep.study.tell(trial, value, skip_if_finished=True)
            else:
                self.sweep.study.tell(trial, state=state, skip_if_finished=True)
        self.run.told = True

    def _set_attrs(self, **attrs: Any) -> None:
        if self.run.trial is None or self.run.told:
            return
        with self.sweep.study_lock:
            for k, v in attrs.items():
                self.run.trial.set_user_attr(k, v)
        self.run.user_attrs.update(attrs)

    def _ensure_report(self) -> None:
        """A pruned trial with no intermediate value is invisible to TPE: evaluate once before telling."""
        if not self.run.has_report and self.run.ft is not None and self.run.step > 0:
            self._evaluate()

    def _finish_pruned(self, user: bool) -> None:
        run = self.run
        if user:
            self._ensure_report()
            run.stopped_by_user = True
            self._set_attrs(stopped_by_user=True, stopped_at_step=run.step)
            self._tell(TrialState.PRUNED)
            self._end("pruned", f"trial {run.number} killed by the user at step {run.step}", kind="killed")
        else:
            self._set_attrs(pruned_at_step=run.step)
            self._tell(TrialState.PRUNED)
            self._end("pruned", f"trial {run.number} pruned at step {run.step} "
                      f"(eval loss {run.last.get('eval_loss', math.nan):.4f})")

    def _finish_stopped(self) -> None:
        """The sweep is stopping: keep a checkpoint so the trial can be forked or extended later."""
        run = self.run
        if run.ft is not None and run.step > run.start_step:
            self._checkpoint(run.last.get("eval_loss"), "stop")
        # Stopped before its first new step (model still building), or the save failed: the newest checkpoint
        # in its dir (a fork's starting point, a resumed trial's last one) is where it continues from.
        saved = ckpt.list_checkpoints(run.trial_dir)
        self._ensure_report()
        if saved:
            self._set_attrs(interrupted_at_step=saved[-1].step, interrupted_checkpoint=str(saved[-1].path))
        else:
            self._set_attrs(interrupted_at_step=0, interrupted_checkpoint=None, interrupted_before_start=run.step == 0)
        self._tell(TrialState.PRUNED)
        self._end("pruned", f"trial {run.number} interrupted at step {run.step} by sweep stop", kind="interrupted")

    def _finish_failed(self, e: BaseException) -> None:
        run = self.run
        oom = isinstance(e, torch.OutOfMemoryError)
        micro = run.ft.batch_size if run.ft is not None else run.params.batch_size
        if oom:
            msg = (f"out of memory at step {run.step} (batch_size={micro}, "
                   f"grad_accum={run.params.grad_accum}): lower batch_size or raise grad_accum")
        else:
            msg = error_line(e)
        run.error = msg
        self._write_error_log()
        self._set_attrs(error=msg, failed_at_step=run.step)
        self._tell(TrialState.FAIL)
        if run.ft is not None:
            run.ft.close()  # free the GPU memory before the retry below asks for it
            run.ft = None
        self._end("fail", f"trial {run.number} failed: {msg}", kind="failed")
        if oom and micro and micro > 1 and self.sweep.preset.study.retry_oom:
            self._retry_smaller(micro)

    def _write_error_log(self, append: bool = False) -> None:
        """The traceback being handled, in trials/<n>/error.log."""
        self.run.trial_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run.trial_dir / "error.log", "a" if append else "w") as f:
            f.write(traceback.format_exc())

    def _last_resort(self, e: BaseException) -> None:
        """Ending the trial the normal way failed: record FAIL with whatever still works, never raise."""
        run, msg = self.run, f"could not end the trial cleanly: {error_line(e)}"
        run.error = run.error or msg
        # The traceback goes to its error.log (not stderr: under the app it would land on the screen).
        for act in (lambda: self._write_error_log(append=True), lambda: self._set_attrs(error=run.error),
                    lambda: self._tell(TrialState.FAIL),
                    lambda: self._end("fail", f"trial {run.number} failed: {msg}", kind="failed")):
            try:
                act()
            except Exception as again:
                log.warning("trial %s: %s; then: %s", run.number, msg, error_line(again))
        run.state = "fail"
        run.finished_at = run.finished_at or time.time()

    def _retry_smaller(self, micro: int) -> None:
        """Re-queue an OOM trial with half the micro-batch and twice the accumulation (same effective batch),
        from its latest checkpoint when it has one."""
        run = self.run
        params = {"batch_size": micro // 2, "grad_accum": run.params.grad_accum * 2}
        try:
            ckpts = ckpt.list_checkpoints(run.trial_dir)
            if ckpts:
                child = self.sweep.fork(run.number, step=ckpts[-1].step, params=params, by_user=run.by_user)
            else:
                child = self.sweep.enqueue({**run.searched, **run.overrides, **params}, by_user=run.by_user)
        except ValueError as err:
            self.events.emit("oom_retry_failed", run.number, f"trial {run.number}: OOM retry not queued: {err}")
            return
        self.events.emit("oom_retry", child, f"trial {child} retries OOM trial {run.number} with batch_size "
                         f"{params['batch_size']} x grad_accum {params['grad_accum']}", parent=run.number)

    def _end(self, state: str, message: str, kind: str | None = None) -> None:
        run = self.run
        run.state, run.finished_at = state, time.time()
        self._bump()
        self.events.emit(kind or state, run.number, message, step=run.step)

    def _on_pause(self) -> None:
        self.run.state = "paused"
        self._bump()
        self.events.emit("paused", self.run.number, f"trial {self.run.number} paused at step {self.run.step}",
                         step=self.run.step)

    def _on_resume(self) -> None:
        self.run.state = "running"
        self._bump()
        self.events.emit("resumed", self.run.number, f"trial {self.run.number} resumed at step {self.run.step}",
                         step=self.run.step)

    def _bump(self) -> None:
        self.run.version += 1
