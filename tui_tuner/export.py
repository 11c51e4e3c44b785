"""`tui-tuner export`: best params as JSON and a CSV of every trial of a run directory."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import optuna

from tui_tuner.engine.errors import SweepError
from tui_tuner.engine.jsonl import read_jsonl
from tui_tuner.engine.run_dir import RunDir
from tui_tuner.engine.run_lock import RunDirLock, RunDirLockedError
from tui_tuner.engine.storage_url import connect_problem, shown
from tui_tuner.engine.study import make_storage
from tui_tuner.engine.study_gateway import repair_torn_journal, state_of
from tui_tuner.format import fmt_loss
from tui_tuner.preset import Preset
from tui_tuner.training.checkpoint_files import CheckpointInfo, list_checkpoints


def export_run(run_dir: Path, out: Path | None = None) -> str:
    layout = RunDir(run_dir)
    storage_url = layout.read_meta().get("storage")
    # Export needs the params and the study, not the data: a run whose data has moved still exports.
    preset = Preset.load(layout.preset, check_paths=False)
    out = out or run_dir
    out.mkdir(parents=True, exist_ok=True)
    repaired = None if storage_url else _repair_if_idle(layout)
    try:
        storage = make_storage(run_dir, storage_url)
    except Exception as e:  # a database --storage that is gone or refuses: one line, as at `run`
        if not storage_url:
            raise
        raise SweepError(f"--storage {shown(storage_url)}: {connect_problem(e, storage_url)}") from None
    study = optuna.load_study(study_name=preset.study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    with (out / "trials.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", *names, "value", "best_eval_loss", "steps", "parent", "stopped_by_user"])
        for t in trials:
            iv = t.intermediate_values
            # The engine's state word (interrupted, killed, cancelled...), not Optuna's: a stopped trial is
            # RUNNING in the study until resumed, and a kill is PRUNED there.
            w.writerow([t.number, str(state_of(t)), *(t.params.get(n, "") for n in names),
                        "" if t.value is None else t.value, min(iv.values()) if iv else "",
                        last_step(t, layout.trial(t.number)), t.user_attrs.get("parent_trial", ""),
                        t.user_attrs.get("stopped_by_user", "")])
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    said = f"{repaired}\n" if repaired else ""
    if not done:
        return f"{said}wrote {out / 'trials.csv'} ({len(trials)} trials); no completed trial yet"
    best = min(done, key=lambda t: t.value)  # type: ignore[arg-type,return-value]
    full = {**preset.params.model_dump(), **t_overrides(best), **best.params}
    (out / "best_params.json").write_text(json.dumps(
        {"trial": best.number, "eval_loss": best.value, "searched": best.params, "params": full}, indent=2) + "\n")
    where = best_checkpoint(list_checkpoints(layout.trial(best.number)), best.value)  # type: ignore[arg-type]
    return (f"{said}wrote {out / 'trials.csv'} ({len(trials)} trials) and {out / 'best_params.json'}\n"
            f"best trial #{best.number}: eval loss {fmt_loss(best.value)}; checkpoint: {where}")


def best_checkpoint(ckpts: list[CheckpointInfo], value: float) -> str:
    """The newest checkpoint holding the weights that scored the best trial's value. The newest checkpoint alone
    may be older (its final save failed on a full disk) and score worse: never name it as the best's."""
    for c in reversed(ckpts):
        if c.eval_loss is not None and math.isclose(c.eval_loss, value, rel_tol=1e-9, abs_tol=1e-12):
            return str(c.path)
    if not ckpts:
        return "(no checkpoint kept)"
    newest = ckpts[-1]
    scored = f"eval loss {fmt_loss(newest.eval_loss)}" if newest.eval_loss is not None else "not evaluated"
    return (f"none kept with its eval loss {fmt_loss(value)} (its final save failed or was removed; the newest kept, "
            f"step {newest.step} at {newest.path}, is {scored})")


def _repair_if_idle(layout: RunDir) -> str | None:
    """Cut a torn last journal record, as resume does, but only when no live process holds the run: a live
    writer's half-written append looks torn, and Optuna reads past a partial last line anyway."""
    try:
        lock = RunDirLock.acquire(layout.lock)
    except RunDirLockedError:
        return None
    try:
        return repair_torn_journal(layout.journal)
    finally:
        lock.release()


# Where the engine's user attrs say a trial ended (killed, pruned, failed, interrupted by a stop, early stopped).
_END_ATTRS = ("stopped_at_step", "pruned_at_step", "failed_at_step", "interrupted_at_step", "early_stopped_at_step")


def last_step(t: optuna.trial.FrozenTrial, trial_dir: Path) -> int | str:
    """The last step the trial ran. Its metrics.jsonl is the record (append-only: after a crash the trial re-runs
    steps from its checkpoint, so the last line is the newest, not the largest step); the attrs and the last
    eval step stand in when that file is gone. Not the last eval step alone: a trial killed or pruned between
    evals ran further."""
    rows = read_jsonl(trial_dir / "metrics.jsonl")
    if rows and "step" in rows[-1]:
        return int(rows[-1]["step"])
    known = [int(t.user_attrs[k]) for k in _END_ATTRS if isinstance(t.user_attrs.get(k), int)]
    known += list(t.intermediate_values)
    return max(known) if known else ""


def t_overrides(t: optuna.trial.FrozenTrial) -> dict:
    return dict(t.user_attrs.get("overrides", {}))
