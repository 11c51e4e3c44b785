"""The sweep-wide words both clients print (status line, headless summary): the budget, the slots, the best."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tui_tuner.engine.snapshot import SweepSnapshot
from tui_tuner.eta import sampler_trials
from tui_tuner.format import fmt_loss

USER_ORIGINS = ("enqueue", "fork")  # trials the user made (new, forked); "pbt" clones are counted apart
BEST_CANDIDATES = ("complete", "running", "paused", "starting", "parked")  # states a best so far is taken from


def budget_words(snap: SweepSnapshot) -> str:
    """'sampler 12/16 +3 yours +2 pbt': sampler-proposed trials of study.n_trials, and the trials outside that
    budget (the user's, PBT's clones), each counted only when there are some."""
    def extra(origins: tuple[str, ...]) -> int:
        return sum(1 for t in snap.trials if t.origin in origins and t.state != "cancelled")

    out = f"sampler {sampler_trials(snap)}/{snap.n_trials}"
    for n, label in ((extra(USER_ORIGINS), "yours"), (extra(("pbt",)), "pbt")):
        if n:
            out += f" +{n} {label}"
    return out


@dataclass(frozen=True)
class Best:
    value: float
    trial: int
    state: str  # "complete", or the state of the unfinished trial it belongs to


def best_so_far(snap: SweepSnapshot) -> Best | None:
    """The lowest eval loss yet: a completed trial's final eval (Optuna's value) or an unfinished trial's best
    report so far, whichever is lower, so the header has a number while the first trials still run."""
    best = Best(snap.best_value, snap.best_trial, "complete") if (
        snap.best_trial is not None and snap.best_value is not None) else None
    for t in snap.trials:
        v = t.best_eval_loss
        unfinished = t.state in BEST_CANDIDATES and t.state != "complete"
        if unfinished and v is not None and math.isfinite(v) and (best is None or v < best.value):
            best = Best(v, t.number, str(t.state))
    return best


def best_words(snap: SweepSnapshot) -> str:
    """'best 0.8617 (#3)' for a completed trial, 'best 0.8617 (#3, running)' for one still going, 'best -'."""
    b = best_so_far(snap)
    if b is None:
        return "best -"
    return f"best {fmt_loss(b.value)} (#{b.trial}{'' if b.state == 'complete' else ', ' + b.state})"


def slot_words(snap: SweepSnapshot) -> tuple[str, str]:
    """('run 3/conc 1', why): trials running against the concurrency, and why that looks wrong when it does
    ('' when it does not). More run than the concurrency only when it was lowered while they ran (the scheduler
    never stops a running trial for it: none starts until they are under it), or, in a shared study, because the
    concurrency is each worker's; paused trials hold slots unless study.paused_frees_slot."""
    c = snap.counts
    run = c.get("running", 0) + c.get("starting", 0)
    paused, conc = c.get("paused", 0), snap.concurrency
    used = snap.slots_used
    shared = len(snap.workers) > 1
    why = ""
    if used is None:  # a client that is not told: only what the counts alone show
        why = "lowered: trials finish" if run > conc and not shared else "conc is per worker" if run > conc else ""
    elif used > conc:
        why = "lowered: trials finish"
    elif shared and run > conc:
        why = "conc is per worker"
    elif not shared and paused and run + paused > conc and used < run + paused:
        why = "paused free slots"
    elif not shared and paused and used >= conc and used > run and work_waits(snap):
        why = "paused hold slots"
    return f"run {run}/conc {conc}", why


def work_waits(snap: SweepSnapshot) -> bool:
    """A trial would start if a slot freed: one is queued, or the sampler budget is not spent."""
    return bool(snap.counts.get("waiting", 0)) or (not snap.halted and sampler_trials(snap) < snap.n_trials)
