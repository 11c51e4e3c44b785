"""One trial in its own thread: builds its Trainer, steps it, obeys its TrialControl, reports and tells Optuna."""

from __future__ import annotations

import errno
import functools
import logging
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState as OptunaState

from tui_tuner.engine.backend import Backend
from tui_tuner.engine.control import Killed, Stopped
from tui_tuner.engine.early_stop import EarlyStop
from tui_tuner.engine.jsonl import JsonlWriter
from tui_tuner.engine.lifecycle import Lifecycle
from tui_tuner.engine.lifecycle import TrialState as S
from tui_tuner.engine.pbt import Exploit, Pbt
from tui_tuner.engine.promotion import PROMOTED_ATTR, Promotion
from tui_tuner.engine.run_dir import RunDir
from tui_tuner.engine.study_gateway import StorageError, StudyGateway
from tui_tuner.engine.trial import TrialRun
from tui_tuner.format import error_line, fmt_loss, fmt_lr
from tui_tuner.preset import Preset
from tui_tuner.training.checkpoint_files import CheckpointInfo, CheckpointKind, list_checkpoints, prune_checkpoints

log = logging.getLogger(__name__)

# A synch PBT member waits at most this long for the others at its boundary, then is ranked with those there:
# a member stuck behind (a slow GPU, a long checkpoint) must not stall the population for good.
PBT_SYNCH_LIMIT_S = 300.0


def checkpoint_failure(e: BaseException, where: Path) -> str:
    """Why a checkpoint write failed, in one line. A full disk says so and where, whatever form it took: an
    OSError ENOSPC (maybe wrapped), or torch's "unexpected pos A vs B" RuntimeError, which is what a short write
    (the disk filled mid-file) looks like from torch.save."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return f"no space left on {where} ({error_line(e)})"
        if isinstance(seen, RuntimeError) and "unexpected pos" in str(seen):
            return f"no space left on {where} (a short write: {error_line(e)})"
        seen = seen.__cause__ or seen.__context__
    return error_line(e)


class Diverged(RuntimeError):
    """The train loss became NaN or infinite."""


class Replaced(optuna.TrialPruned):
    """PBT replaced this member by a clone of a better one: it ends PRUNED, with why in its attrs."""

    def __init__(self, message: str, attrs: dict[str, Any]):
        super().__init__(message)
        self.attrs = attrs


class TrialHost(Protocol):
    """What a trial thread may use of the sweep (the Sweep implements it); nothing else of it."""

    preset: Preset
    backend: Backend
    gateway: StudyGateway
    lifecycle: Lifecycle
    layout: RunDir
    n_train: int

    @property
    def stopping(self) -> bool: ...
    def emit(self, kind: str, trial: int | None, message: str, **data: Any) -> Any: ...
    pbt: Pbt | None
    promotion: Promotion | None

    def fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None, *,
             by_user: bool = True) -> int: ...
    def pbt_step(self, run: TrialRun) -> tuple[Exploit, int] | None: ...
    def pbt_behind(self, run: TrialRun) -> list[int]: ...
    def enqueue(self, params: dict[str, Any], *, by_user: bool = True) -> int: ...
    def trial_ended(self, run: TrialRun) -> None: ...
    def gpu_oom(self, run: TrialRun) -> None: ...
    def storage_failed(self, message: str) -> None: ...


class TrialRunner:
    """The body of a trial thread. Every Optuna call for its trial happens on this thread, via the gateway."""

    def __init__(self, host: TrialHost, run: TrialRun):
        self.host, self.run = host, run
        self.metrics = JsonlWriter(host.layout.metrics(run.number))
        self._killing = False  # in _finish_killed: a storage error there leaves the kill for resume to tell

    # -- thread entry ------------------------------------------------------------------------
    def __call__(self) -> None:
        run, host = self.run, self.host
        try:
            try:
                self._train()
            except Killed:
                self._finish_killed()
            except Stopped:
                self._finish_interrupted()
            except optuna.TrialPruned as e:
                self._finish_pruned(e)
            except StorageError:
                raise  # the study's storage broke, not this trial: below
            except Exception as e:  # a failing trial must not take the sweep down
                if host.stopping:  # e.g. interpreter shutdown under a trial still building: not the trial's fault
                    self._finish_interrupted()
                else:
                    self._finish_failed(e)
        except StorageError as e:  # in training or in a handler: halt the sweep, keep this trial resumable
            self._guarded("interrupt the trial", functools.partial(self._storage_failed, e))
        except Exception as e:  # a handler itself failed (disk gone): still end it, told
            self._last_resort(e)
        finally:
            # Each step on its own: a file that cannot be closed (disk full, chattr +i) must never skip the
            # bookkeeping after it, or the scheduler waits for this trial forever.
            self._guarded("end the trial", self._never_left_active)
            self._guarded("free the model", self._close_trainer)
            self._guarded("close metrics.jsonl", self.metrics.close)
            run.control.fail_pending(RuntimeError(f"trial {run.number} has finished"))
            host.trial_ended(run)

    def _guarded(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:
            log.warning("trial %s: could not %s: %s", self.run.number, what, error_line(e))

    def _never_left_active(self) -> None:
        if self.run.active:
            self.run.error = self.run.error or "ended without a state (see error.log)"
            self._end(S.FAILED, f"trial {self.run.number} failed: {self.run.error}")

    def _close_trainer(self) -> None:
        if self.run.ft is not None:
            ft, self.run.ft = self.run.ft, None
            ft.close()

    def _train(self) -> None:
        run, host, p = self.run, self.host, self.host.preset
        assert run.params is not None
        host.backend.set_threads(p.device.threads_per_trial)
        ft = host.backend.build(p, run.params, run.resume_from, run.device if run.gpu is not None else None)
        run.ft = ft
        run.device = str(ft.device)
        if run.params.batch_size is None:
            host.emit("batch_size_rule", run.number, f"trial {run.number}: batch_size unset: using "
                      f"{ft.batch_size} (~0.2% of {host.n_train} training examples, at most 256)")
        run.step, run.total, run.start_step = ft.step_count, ft.total_steps, ft.step_count
        run.checkpoints = list_checkpoints(run.trial_dir)
        run.control.boundary(self._on_pause, self._on_resume)  # a kill, stop or pause that came during the build
        if run.state is S.STARTING:
            where = f" from step {ft.step_count}" if run.resume_from else ""
            self._end(S.RUNNING, f"trial {run.number} started{where}", params=run.searched)
        interval, ck_every = run.params.eval_interval, p.checkpoints.interval
        pbt = host.pbt if run.origin in ("sampler", "pbt") else None  # the user's own trials are not members
        promo = host.promotion
        stopper = self._early_stop()
        stopped = stopper.should_stop  # resumed after it decided to stop but before the tell: stop at once
        if promo is not None and promo.parks(run.origin, run.user_attrs, ft.step_count):
            # Restored at its rung checkpoint before it could park (a crash between the save and the attrs).
            self._park(self._evaluate())
            return
        while not ft.done and not stopped:
            run.control.boundary(self._on_pause, self._on_resume)
            m = ft.step()
            if not math.isfinite(m.loss):
                raise Diverged(f"train loss is {m.loss} at step {m.step} (lr={fmt_lr(m.lr)}): diverged")
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
            boundary = pbt is not None and pbt.is_boundary(m.step, ft.total_steps)
            rung = promo is not None and promo.parks(run.origin, run.user_attrs, m.step)
            if m.step % interval == 0 or ft.done or boundary or rung:
                eval_loss = self._evaluate()
                if not math.isfinite(eval_loss):
                    raise Diverged(f"eval loss is {eval_loss} at step {m.step}: diverged, or the eval split has "
                                   "no target tokens (check data.max_length against the prompts' length)")
                if not ft.done:
                    stopped = stopper.observe(m.step, eval_loss)
                    if stopped:  # the final checkpoint below is this step's
                        run.version += 1
                        break
                    self._maybe_prune()
            # A PBT boundary saves too (a worse member's clone of this one starts from it), and so does the
            # first rung of promotion (a promoted trial continues from it).
            periodic = (bool(ck_every) and m.step % ck_every == 0) or boundary or rung
            new_best = (p.checkpoints.keep_best and eval_loss is not None
                        and (best_before is None or eval_loss < best_before))
            if (periodic or new_best) and not ft.done:  # the final step is saved below in any case
                self._checkpoint(eval_loss, "periodic" if periodic else "best")
            run.version += 1  # new metrics: clients redraw this trial
            if boundary and not run.control.paused:
                self._pbt_boundary()
            if rung and eval_loss is not None:
                self._park(eval_loss)
                return
        if stopped:
            self._finish_early_stopped(stopper)
            return
        if run.step == run.start_step:  # restored at its last step (a crash before the tell): nothing ran
            self._evaluate()
        self._checkpoint(run.last.get("eval_loss"), "final")
        final = run.last.get("eval_loss", math.nan)
        if not math.isfinite(final):
            raise Diverged(f"final eval loss is {final} at step {run.step}")
        self._tell(OptunaState.COMPLETE, final)
        self._end(S.COMPLETE, f"trial {run.number} completed: eval loss {fmt_loss(final)}")

    # -- pieces --------------------------------------------------------------------------------
    def _early_stop(self) -> EarlyStop:
        """The early-stopping count, replayed from the evals this trial itself ran (a resumed trial's history
        holds those up to its checkpoint); a fork's start at its parent's curve is not its own: only the evals
        after its fork step count, with the patience it runs with now."""
        run = self.run
        assert run.params is not None
        floor = run.fork_step if run.fork_step is not None else -1
        evals = [(s, v) for s, v in run.history.series["eval_loss"].points() if s > floor]
        return EarlyStop.replay(run.params.early_stopping_patience, run.params.early_stopping_min_delta, evals)

    def _finish_early_stopped(self, stopper: EarlyStop) -> None:
        """COMPLETE, told with its best eval (where it was heading no longer matters), final checkpoint saved."""
        run = self.run
        self._checkpoint(run.last.get("eval_loss"), "final")
        reason, best = stopper.reason(), stopper.best
        assert best is not None
        self._set_attrs(early_stopped_at_step=run.step, early_stop_reason=reason)
        self._tell(OptunaState.COMPLETE, best)
        self._end(S.COMPLETE, f"trial {run.number} completed, early stopped at step {run.step}: {reason}; best "
                  f"eval loss {fmt_loss(best)}", early_stopped=True)

    def _eval_step(self) -> float | None:
        last = self.run.history.series["eval_loss"].last()
        return last[0] if last is not None else None

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
                self.host.gateway.report(run.trial, value, ft.step_count)
                run.has_report = True
        return value

    def _park(self, eval_loss: float) -> None:
        """Promotion's first rung: checkpointed (above), the thread ends; the scheduler promotes it or drops it."""
        run, conf = self.run, self.host.preset.promote
        assert conf is not None
        self._set_attrs(parked_at_step=run.step, rung_eval=eval_loss)
        self._end(S.PARKED, f"trial {run.number} parked at step {run.step} (eval {fmt_loss(eval_loss)}): the best "
                  f"{conf.top_k} at this step continue to step {run.total}")

    def _pbt_boundary(self) -> None:
        """Bottom of the population at this step: a clone of a top member takes this one's place. With pbt.synch
        it first waits for the members behind it (pause, kill and stop still act while it waits)."""
        host, run = self.host, self.run
        assert host.pbt is not None
        deadline = time.monotonic() + PBT_SYNCH_LIMIT_S
        while host.pbt.conf.synch and host.pbt_behind(run) and time.monotonic() < deadline:
            run.control.boundary(self._on_pause, self._on_resume)
            time.sleep(0.02)
        got = host.pbt_step(run)
        if got is None:
            return
        d, child = got
        why = (f"PBT: bottom of {d.ranked} at step {d.step} (eval {fmt_loss(d.loser_score)}), replaced by trial "
               f"{child}, a clone of trial {d.donor} (eval {fmt_loss(d.donor_score)})")
        raise Replaced(f"trial {self.run.number} replaced at step {d.step} by trial {child} (PBT: clone of trial "
                       f"{d.donor})", {"pbt_replaced_by": child, "pruned_reason": why})

    def _maybe_prune(self) -> None:
        run = self.run
        if run.trial is None or run.control.paused:
            return
        if run.by_user and not self.host.preset.study.prune_user_trials:
            return  # a trial the user asked for runs to its end unless the preset says otherwise
        if run.user_attrs.get(PROMOTED_ATTR):
            return  # promotion chose it to run to the end: the pruner had its say before the rung
        if self.host.gateway.should_prune(run.trial):
            raise optuna.TrialPruned(f"pruned at step {run.step} by {self.host.preset.study.pruner}")

    def _checkpoint(self, eval_loss: float | None, kind: CheckpointKind) -> CheckpointInfo | None:
        """Save; on a disk or permission error keep the previous good checkpoint and log it loudly."""
        run, conf = self.run, self.host.preset.checkpoints
        assert run.ft is not None
        try:
            info = self.host.backend.save(run.ft, run.trial_dir, eval_loss, kind)
            prune_checkpoints(run.trial_dir, conf.keep, conf.keep_best)
        except Exception as e:  # torch.save and safetensors raise RuntimeError-like errors on a full disk, too
            self.host.emit("checkpoint_failed", run.number, f"trial {run.number}: checkpoint at step "
                           f"{run.step} failed: {checkpoint_failure(e, run.trial_dir / 'checkpoints')}; previous "
                           "checkpoint kept")
            return None
        run.checkpoints = list_checkpoints(run.trial_dir)
        run.version += 1
        self.host.emit("checkpoint", run.number, f"trial {run.number}: checkpoint at step {info.step}",
                       step=info.step, path=self.host.layout.relative(info.path))
        return info

    def checkpoint_now(self) -> CheckpointInfo:
        """Runs on the trial thread (via TrialControl.submit)."""
        evaluated = self._eval_step() == self.run.step
        info = self._checkpoint(self.run.last.get("eval_loss") if evaluated else None, "now")
        if info is None:
            raise OSError(f"trial {self.run.number}: checkpoint failed (see events.jsonl)")
        return info

    def _tell(self, state: OptunaState, value: float | None = None) -> None:
        if self.run.trial is not None:
            self.host.gateway.tell(self.run.trial, state, value)
        self.run.told = True

    def _set_attrs(self, **attrs: Any) -> None:
        if self.run.trial is None or self.run.told:
            return
        self.host.gateway.set_attrs(self.run.trial, attrs)
        self.run.user_attrs.update(attrs)
        self.run.version += 1

    def _ensure_report(self) -> None:
        """A pruned trial with no intermediate value is invisible to TPE: evaluate once before telling."""
        if not self.run.has_report and self.run.ft is not None and self.run.step > 0:
            self._evaluate()

    def _finish_killed(self) -> None:
        run = self.run
        self._killing = True
        self._ensure_report()
        self._set_attrs(stopped_by_user=True, stopped_at_step=run.step)
        self._tell(OptunaState.PRUNED)
        self._end(S.KILLED, f"trial {run.number} killed by the user at step {run.step}")

    def _finish_pruned(self, e: optuna.TrialPruned) -> None:
        run = self.run
        extra = e.attrs if isinstance(e, Replaced) else {"pruned_reason": str(e) or "pruned"}
        self._set_attrs(pruned_at_step=run.step, **extra)
        self._tell(OptunaState.PRUNED)
        what = str(e) if isinstance(e, Replaced) else f"trial {run.number} pruned at step {run.step}"
        self._end(S.PRUNED, f"{what} (eval loss {fmt_loss(run.last.get('eval_loss'))})")

    def _finish_interrupted(self, because: str = "the sweep stop") -> None:
        """The sweep is stopping: checkpoint, and leave the trial RUNNING in Optuna with where to continue from.
        It is never told: an interruption says nothing about its params, so the sampler must not learn from it."""
        run = self.run
        if run.ft is not None and run.step > run.start_step:
            self._checkpoint(run.last.get("eval_loss"), "stop")
        # Stopped before its first new step (model still building), or the save failed: the newest checkpoint
        # in its dir (a fork's starting point, a resumed trial's last one) is where it continues from.
        saved = list_checkpoints(run.trial_dir)
        at = saved[-1] if saved else None
        try:
            self._set_attrs(interrupted_at_step=at.step if at else 0,
                            interrupted_checkpoint=self.host.layout.relative(at.path) if at else None,
                            paused=run.control.paused)
        except StorageError as e:
            # It is RUNNING in the study, and resume continues a RUNNING trial from its newest checkpoint: the
            # attrs only add where the stop was. Losing them must not turn an interruption into a failure.
            log.warning("trial %s: interrupted without its stop attrs: %s", run.number, e)
        where = f"checkpoint step {at.step}" if at else "no checkpoint: it restarts from step 0"
        self._end(S.INTERRUPTED, f"trial {run.number} interrupted at step {run.step} by {because} ({where})")

    def _storage_failed(self, e: StorageError) -> None:
        """The storage failed under this trial: halt the sweep (it stops the other trials too) and end this one
        interrupted; `resume` continues them all once the storage works again."""
        self.host.storage_failed(str(e))
        if self.run.active:
            # The kill_requested event (and stopped_by_user, if it was written) tells resume to finish the kill.
            kill = "; its kill is told when the run is resumed" if self._killing else ""
            self._finish_interrupted(because=f"a storage error ({e}){kill}")

    def _finish_failed(self, e: BaseException) -> None:
        run = self.run
        oom = self.host.backend.is_oom(e)
        assert run.params is not None
        micro = run.ft.batch_size if run.ft is not None else run.params.batch_size
        if oom:
            self.host.gpu_oom(run)  # the next trial like it is placed with more room
            msg = (f"out of memory at step {run.step} (batch_size={micro}, "
                   f"grad_accum={run.params.grad_accum}): lower batch_size or raise grad_accum")
        else:
            msg = error_line(e)
        run.error = msg
        self._write_error_log()
        self._set_attrs(error=msg, failed_at_step=run.step)
        self._tell(OptunaState.FAIL)
        self._close_trainer()  # free the GPU memory before the retry below asks for it
        self._end(S.FAILED, f"trial {run.number} failed: {msg}")
        if oom and micro and micro > 1 and self.host.preset.study.retry_oom:
            self._retry_smaller(micro)

    def _write_error_log(self, append: bool = False) -> None:
        """The traceback being handled, in trials/<n>/error.log."""
        path: Path = self.host.layout.error_log(self.run.number)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a" if append else "w") as f:
            f.write(traceback.format_exc())

    def _last_resort(self, e: BaseException) -> None:
        """Ending the trial the normal way failed: record FAIL with whatever still works, never raise."""
        run, msg = self.run, f"could not end the trial cleanly: {error_line(e)}"
        run.error = run.error or msg
        # The traceback goes to its error.log (not stderr: under the app it would land on the screen).
        for act in (lambda: self._write_error_log(append=True), lambda: self._set_attrs(error=run.error),
                    lambda: self._tell(OptunaState.FAIL), self._never_left_active):
            self._guarded("record the failure", act)

    def _retry_smaller(self, micro: int) -> None:
        """Re-queue an OOM trial with half the micro-batch and twice the accumulation (same effective batch),
        from its latest checkpoint when it has one."""
        run = self.run
        assert run.params is not None
        params = {"batch_size": micro // 2, "grad_accum": run.params.grad_accum * 2}
        try:
            ckpts = list_checkpoints(run.trial_dir)
            if ckpts:
                child = self.host.fork(run.number, step=ckpts[-1].step, params=params, by_user=run.by_user)
            else:
                child = self.host.enqueue({**run.searched, **run.overrides, **params}, by_user=run.by_user)
        except ValueError as err:
            self.host.emit("oom_retry_failed", run.number, f"trial {run.number}: OOM retry not queued: {err}")
            return
        self.host.emit("oom_retry", child, f"trial {child} retries OOM trial {run.number} with batch_size "
                       f"{params['batch_size']} x grad_accum {params['grad_accum']}", parent=run.number)

    def _end(self, to: S, message: str, **data: Any) -> None:
        self.host.lifecycle.move(self.run, to, message, **data)

    def _on_pause(self) -> None:
        self._end(S.PAUSED, f"trial {self.run.number} paused at step {self.run.step}")
        self._set_attrs(paused=True)

    def _on_resume(self) -> None:
        self._end(S.RUNNING, f"trial {self.run.number} resumed at step {self.run.step}")
        self._set_attrs(paused=False)
