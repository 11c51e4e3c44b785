"""Reopening a run: rebuild a record of every stored trial and say which interrupted ones to continue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState
from pydantic import ValidationError

from tui_tuner.engine.jsonl import read_jsonl
from tui_tuner.engine.lifecycle import TrialState as S
from tui_tuner.engine.run_dir import RunDir
from tui_tuner.engine.study_gateway import CONCURRENCY_ATTR, StudyGateway, by_user, state_of
from tui_tuner.engine.trial import TrialRun
from tui_tuner.params import TrialParams
from tui_tuner.preset import Preset
from tui_tuner.training.checkpoint_files import CheckpointInfo, list_checkpoints


@dataclass
class Reloaded:
    runs: list[TrialRun] = field(default_factory=list)  # every stored trial, in number order
    relaunch: list[TrialRun] = field(default_factory=list)  # interrupted ones, to continue under their numbers
    sampled: int = 0  # sampler-proposed trials already spent from the budget
    concurrency: int | None = None  # the live value when the run stopped
    legacy: list[tuple[TrialRun, CheckpointInfo | None]] = field(default_factory=list)  # 0.1.0 stops, see below


def reload(gateway: StudyGateway, layout: RunDir, preset: Preset,
           total_steps: Callable[[TrialParams], int]) -> Reloaded:
    """Records of every trial in the study, and what the relaunch needs (its budget, concurrency, pauses)."""
    events = read_jsonl(layout.events)
    paused_legacy = _paused_at_death(events)
    trials = gateway.trials()
    continued = {t.user_attrs.get("continues") for t in trials}
    out = Reloaded(concurrency=gateway.study_attr(CONCURRENCY_ATTR) or _last_concurrency(events))
    by_number: dict[int, TrialRun] = {}
    for t in trials:
        a = t.user_attrs
        if a.get("origin", "sampler") == "sampler" and t.state != OptunaState.WAITING \
                and not a.get("interrupted_before_start"):
            out.sampled += 1  # a 0.1.0 trial stopped before it started is queued again (below) and counts then
        run = record_of(t, layout, preset)
        by_number[t.number] = run
        out.runs.append(run)
        if run.params is None:  # waiting: nothing ran yet
            continue
        run.total = total_steps(run.params)
        ckpts = list_checkpoints(run.trial_dir)
        run.checkpoints = ckpts
        if t.state == OptunaState.RUNNING:
            start = _resume_point(ckpts)
            _load_history(run, by_number, start.step if start else 0)
            run.trial = gateway.handle(t)
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
    except ValidationError:
        params = None  # params the current schema refuses: shown, never run again
    return TrialRun(params=params, searched=dict(t.params), **common)


def _legacy_stop_point(a: dict[str, Any], ckpts: list[CheckpointInfo], layout: RunDir) -> CheckpointInfo | None:
    """A 0.1.0 stop recorded its checkpoint's absolute path: that one, mapped into this (maybe moved) run dir."""
    stored = layout.resolve(a.get("interrupted_checkpoint"))
    if stored is not None and stored.is_dir():
        for c in ckpts:
            if c.path.resolve() == stored.resolve():
                return c
    return None


def _resume_point(ckpts: list[CheckpointInfo]) -> CheckpointInfo | None:
    """Where an interrupted trial continues: its newest checkpoint (the stop's; after a crash, the last periodic
    one, which may be newer than an earlier stop's; for a fork that never stepped, its fork checkpoint), else
    None (from step 0)."""
    return ckpts[-1] if ckpts else None


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


def _last_concurrency(events: list[dict[str, Any]]) -> int | None:
    values = [e["concurrency"] for e in events if e.get("event") == "concurrency" and "concurrency" in e]
    return values[-1] if values else None
