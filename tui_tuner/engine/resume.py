"""Reopening a run: rebuild a record of every stored trial and say which interrupted ones to continue."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState
from pydantic import ValidationError

from tui_tuner.engine.jsonl import read_jsonl
from tui_tuner.engine.lifecycle import TrialState as S
from tui_tuner.engine.run_dir import RunDir, stage_copy
from tui_tuner.engine.study_gateway import (
    ELAPSED_ATTR,
    StudyGateway,
    by_user,
    counts_against_budget,
    from_checkpoint,
    state_of,
)
from tui_tuner.engine.trial import TrialRun
from tui_tuner.params import TrialParams, first_error
from tui_tuner.preset import Preset
from tui_tuner.training.checkpoint_files import CheckpointInfo, checkpoint_dir, checkpoint_problem, list_checkpoints

Note = tuple[str, int | None, str, dict[str, Any]]  # (event kind, trial, message, data)


@dataclass
class Reloaded:
    runs: list[TrialRun] = field(default_factory=list)  # every stored trial, in number order
    relaunch: list[TrialRun] = field(default_factory=list)  # interrupted ones, to continue under their numbers
    sampled: int = 0  # sampler-proposed trials already spent from the budget
    concurrency: int | None = None  # the live value when the run stopped
    elapsed: float = 0.0  # seconds the study ran before (study.timeout counts on from there)
    legacy: list[tuple[TrialRun, CheckpointInfo | None]] = field(default_factory=list)  # 0.1.0 stops, see below
    notes: list[Note] = field(default_factory=list)  # events for the sweep to emit: what the reload repaired


def reload(gateway: StudyGateway, layout: RunDir, preset: Preset,
           total_steps: Callable[[TrialParams], int]) -> Reloaded:
    """Records of every trial in the study, and what the relaunch needs (its budget, concurrency, pauses)."""
    events = read_jsonl(layout.events)
    paused_legacy = _paused_at_death(events)
    kills = _kills_not_told(events)
    notes: list[Note] = []
    _repair_waiting_forks(gateway, layout, notes)  # before the records: a cancelled fork is read back as such
    every = gateway.trials()
    trials = [t for t in every if gateway.mine(t)]  # another worker's trials are its own to resume
    continued = {t.user_attrs.get("continues") for t in trials}
    out = Reloaded(concurrency=gateway.study_attr(gateway.concurrency_attr) or _last_concurrency(events), notes=notes,
                   elapsed=float(gateway.study_attr(ELAPSED_ATTR) or 0.0))
    out.sampled = sum(counts_against_budget(t) for t in every)  # the study's budget is every worker's
    by_number: dict[int, TrialRun] = {}
    for t in trials:
        a = t.user_attrs
        run = record_of(t, layout, preset)
        by_number[t.number] = run
        out.runs.append(run)
        if t.state == OptunaState.RUNNING and (why := _cannot_continue(t, run, preset)) is not None:
            # Relaunching it is impossible, and leaving it would keep the run "resumable" forever: fail it.
            run.trial = gateway.handle(t)
            _fail_at_resume(gateway, run, why, out.notes)
            _load_history(run, by_number, None)
            continue
        if t.state == OptunaState.RUNNING and (a.get("stopped_by_user") or t.number in kills):
            # Killed by the user, but the storage failed (or the process died) before the PRUNED tell: tell it now
            # rather than continue a trial the user ended.
            run.trial = gateway.handle(t)
            _load_history(run, by_number, None)
            step = a.get("stopped_at_step", run.step)
            _end_at_resume(gateway, run, S.KILLED, {"stopped_by_user": True, "stopped_at_step": step}, out.notes,
                           f"trial {t.number} killed by the user at step {step} (the kill is told now: the "
                           "storage failed or the run died before it was)")
            continue
        if run.params is None:  # waiting: nothing ran yet (or finished with params the schema now refuses)
            continue
        run.total = total_steps(run.params)
        ckpts = list_checkpoints(run.trial_dir)
        run.checkpoints = ckpts
        if run.state is S.PARKED:  # promotion decides about it (the scheduler, once the rung is complete)
            run.trial = gateway.handle(t)
            _load_history(run, by_number, None)
            continue
        if t.state == OptunaState.RUNNING:
            restage = (lambda run=run, a=a: _restage_fork(layout, a, run)) if run.fork_step is not None else None
            start = _resume_point(run, ckpts, layout, out.notes, restage)
            run.trial = gateway.handle(t)
            if start is None and run.fork_step is not None:
                # A fork from step 0 would be another trial under its number: fail it, naming what is gone.
                _fail_at_resume(gateway, run, f"no intact checkpoint to continue from (its own are damaged or "
                                f"gone, and so is its parent's {a.get('fork_checkpoint')})", out.notes)
                _load_history(run, by_number, None)
                continue
            _load_history(run, by_number, start.step if start else 0)
            run.resume_from = start.path if start else None
            run.has_report = bool(t.intermediate_values)
            if a.get("paused", t.number in paused_legacy):
                run.control.pause()
            out.relaunch.append(run)
        else:
            _load_history(run, by_number, None)
            run.error = a.get("error")
            run.started_at = t.datetime_start.timestamp() if t.datetime_start else None
            run.finished_at = t.datetime_complete.timestamp() if t.datetime_complete else None
            if run.state is S.INTERRUPTED and t.number not in continued:
                # 0.1.0 told a stopped trial PRUNED (finished trials are immutable): it continues as a fork of
                # itself from its stop checkpoint, once (user attr `continues`), as 0.1.0's resume did.
                out.legacy.append((run, _legacy_stop_point(a, ckpts, layout)))
    return out


def record_of(t: FrozenTrial, layout: RunDir, preset: Preset) -> TrialRun:
    """The record of a stored trial, in the state the study says (metrics and checkpoints are loaded apart)."""
    a = t.user_attrs
    overrides = dict(a.get("overrides", {}))
    state = state_of(t)
    common: dict[str, Any] = dict(
        number=t.number, trial=None, overrides=overrides, trial_dir=layout.trial(t.number),
        origin=a.get("origin", "sampler"), by_user=by_user(a), parent=a.get("parent_trial"),
        fork_step=a.get("fork_step"), user_attrs=dict(a), state=state)
    if state is S.WAITING:
        return TrialRun(params=None, searched=dict(t.system_attrs.get("fixed_params", {})), **common)
    try:
        params = TrialParams.model_validate({**preset.params.model_dump(), **t.params, **overrides})
    except ValidationError as e:
        # Params the current preset or schema refuses (the preset was edited): shown, never run again.
        return TrialRun(params=None, searched=dict(t.params), error=f"its params are no longer valid "
                        f"({first_error(e)})", **common)
    return TrialRun(params=params, searched=dict(t.params), **common)


def _cannot_continue(t: FrozenTrial, run: TrialRun, preset: Preset) -> str | None:
    """Why an interrupted (RUNNING) trial cannot be continued, in one line; None when it can."""
    if run.params is None:
        return f"{run.error}: it cannot be continued (was the preset edited?)"
    never_ran = not (run.trial_dir / "metrics.jsonl").exists() and not list_checkpoints(run.trial_dir)
    missing = sorted(k for k in preset.search if k not in t.params and k not in run.overrides)
    if never_ran and ("origin" not in t.user_attrs or missing):
        return (f"the sweep ended while the sampler was creating it (never sampled: {', '.join(missing)})"
                if missing else "the sweep ended while the sampler was creating it")
    return None


def _fail_at_resume(gateway: StudyGateway, run: TrialRun, why: str, notes: list[Note]) -> None:
    run.error = why
    _end_at_resume(gateway, run, S.FAILED, {"error": why}, notes, f"trial {run.number} failed at resume: {why}")


_TOLD = {S.FAILED: OptunaState.FAIL, S.KILLED: OptunaState.PRUNED}


def _end_at_resume(gateway: StudyGateway, run: TrialRun, state: S, attrs: dict[str, Any], notes: list[Note],
                   message: str) -> None:
    """End an interrupted trial instead of continuing it: attrs, the tell, the record's state, an event."""
    assert run.trial is not None
    gateway.set_attrs(run.trial, attrs)
    gateway.tell(run.trial, _TOLD[state])
    run.state = state
    run.user_attrs.update(attrs)
    notes.append((str(state), run.number, message, {}))


def _legacy_stop_point(a: dict[str, Any], ckpts: list[CheckpointInfo], layout: RunDir) -> CheckpointInfo | None:
    """A 0.1.0 stop recorded its checkpoint's absolute path: that one, mapped into this (maybe moved) run dir."""
    stored = layout.resolve(a.get("interrupted_checkpoint"))
    if stored is not None and stored.is_dir():
        for c in ckpts:
            if c.path.resolve() == stored.resolve():
                return c
    return None


def _resume_point(run: TrialRun, ckpts: list[CheckpointInfo], layout: RunDir, notes: list[Note],
                  restage: Callable[[], CheckpointInfo | None] | None) -> CheckpointInfo | None:
    """Where an interrupted trial continues: its newest intact checkpoint (the stop's; after a crash, the last
    periodic one, which may be newer than an earlier stop's; for a fork that never stepped, its fork checkpoint;
    for a fork whose own are all damaged, its parent's again, via `restage`), else None (from step 0). Every
    checkpoint passed over, and a recorded stop checkpoint that is gone, is said in a note: never silently."""
    n = run.number
    damaged: list[tuple[CheckpointInfo, str]] = []
    chosen: CheckpointInfo | None = None
    for c in reversed(ckpts):
        problem = checkpoint_problem(c.path)
        if problem is None:
            chosen = c
            break
        damaged.append((c, problem))
    instead = f"it continues from step {chosen.step}" if chosen else ""
    if chosen is None and restage is not None:
        chosen = restage()
        instead = (f"it continues from its fork checkpoint (step {chosen.step}), copied again from its parent's"
                   if chosen else "its parent's fork checkpoint is gone too: it fails")
    if chosen is None and not instead:
        instead = "no intact checkpoint is left: it restarts from step 0"
    used = chosen.step if chosen else None
    for c, problem in damaged:
        notes.append(("checkpoint_damaged", n, f"trial {n}: checkpoint step {c.step} is damaged ({problem}); "
                      f"{instead}", {"step": c.step, "problem": problem, "used_step": used}))
    a = run.user_attrs
    stop_step, recorded = a.get("interrupted_at_step"), layout.resolve(a.get("interrupted_checkpoint"))
    newest = ckpts[-1].step if ckpts else -1
    # A stop checkpoint older than the newest one was superseded (and may have been pruned): not news. One at
    # least as new as every checkpoint left was the one to continue from, and someone deleted it.
    if recorded is not None and not recorded.is_dir() and isinstance(stop_step, int) and stop_step >= newest:
        notes.append(("resume_checkpoint_missing", n, f"trial {n}: its stop checkpoint "
                      f"{a['interrupted_checkpoint']} (step {stop_step}) is gone; {instead}",
                      {"step": stop_step, "used_step": used}))
    return chosen


def _restage(layout: RunDir, a: dict[str, Any], dest: Path) -> bool:
    """Copy a fork's checkpoint again from its parent's (`fork_checkpoint`), if that is still there and intact."""
    src = layout.resolve(a.get("fork_checkpoint"))
    if src is None or not src.is_dir() or checkpoint_problem(src) is not None:
        return False
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = stage_copy(src, layout.trials)
    try:
        staged.rename(dest)
    finally:
        shutil.rmtree(staged.parent, ignore_errors=True)
    return True


def _restage_fork(layout: RunDir, a: dict[str, Any], run: TrialRun) -> CheckpointInfo | None:
    assert run.fork_step is not None
    if not _restage(layout, a, checkpoint_dir(run.trial_dir, run.fork_step)):
        return None
    run.checkpoints = list_checkpoints(run.trial_dir)
    return next((c for c in run.checkpoints if c.step == run.fork_step), None)


def _repair_waiting_forks(gateway: StudyGateway, layout: RunDir, notes: list[Note]) -> None:
    """A crash between a fork's enqueue and the rename of its checkpoint copy leaves a queued fork without its
    starting point: copy it again from the parent's checkpoint, or cancel the fork saying why (running it would
    raise FileNotFoundError, or worse, start it from step 0)."""
    for t in gateway.own_trials():
        a = t.user_attrs
        if t.state != OptunaState.WAITING or not from_checkpoint(a):
            continue
        n, dest = t.number, checkpoint_dir(layout.trial(t.number), a["fork_step"])
        problem = checkpoint_problem(dest) if dest.is_dir() else f"{layout.relative(dest)} is missing"
        if problem is None:
            continue
        if _restage(layout, a, dest):
            notes.append(("fork_restaged", n, f"trial {n}: its fork checkpoint was damaged or lost ({problem}); "
                          f"copied again from {a.get('fork_checkpoint')}", {"problem": problem}))
            continue
        reason = (f"its fork checkpoint is damaged or lost ({problem}) and its parent's "
                  f"{a.get('fork_checkpoint')} is gone too")
        gateway.cancel_waiting(t, reason=reason)
        notes.append(("fork_cancelled", n, f"trial {n} cancelled: {reason}", {"problem": problem}))


def _load_history(run: TrialRun, runs: dict[int, TrialRun], until: int | None) -> None:
    if run.parent is not None and run.parent in runs and run.fork_step is not None:
        run.history.copy_prefix(runs[run.parent].history, until=run.fork_step)
    rows: list[dict[str, Any]] = []
    for row in read_jsonl(run.trial_dir / "metrics.jsonl"):
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
    """0.1.0 runs: which trials the event log leaves paused (newer runs keep a `paused` user attr)."""
    paused: set[int] = set()
    for e in events:
        if e.get("event") == "paused":
            paused.add(e["trial"])
        elif e.get("event") in ("resumed", "killed", "complete", "pruned", "failed", "interrupted"):
            paused.discard(e["trial"])
    return paused


def _kills_not_told(events: list[dict[str, Any]]) -> set[int]:
    """Trials whose last kill request the event log never saw carried out (a kill wins over a stop at the
    trial's boundary, so a request followed only by `interrupted` is a kill whose tell failed, or a crash)."""
    pending: set[int] = set()
    for e in events:
        if e.get("event") == "kill_requested":
            pending.add(e["trial"])
        elif e.get("event") in ("killed", "complete", "pruned", "failed", "cancelled"):
            pending.discard(e["trial"])
    return pending


def _last_concurrency(events: list[dict[str, Any]]) -> int | None:
    values = [e["concurrency"] for e in events if e.get("event") == "concurrency" and "concurrency" in e]
    return values[-1] if values else None
