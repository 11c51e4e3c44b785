"""Scoring a search by trial-steps: the optimizer steps its trials trained, in the order the study spent them,
until the best eval loss so far first reached a target."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

Record = tuple[int, float]  # (trial-steps spent so far, best eval loss so far), one per eval


@dataclass(frozen=True)
class Timeline:
    """One search's evals in the order they happened, and the trial-steps it spent in all."""

    records: list[Record]
    total_steps: int

    @property
    def best(self) -> float:
        return min((best for _, best in self.records), default=math.nan)


def steps_to_reach(records: list[Record], target: float) -> int | None:
    """Trial-steps spent when the best eval so far was first ≤ target; None if it never was."""
    return next((steps for steps, best in records if best <= target), None)


def running_best(evals: list[tuple[int, float]]) -> list[Record]:
    """(trial-steps so far, eval loss) in time order → (trial-steps so far, best eval loss so far)."""
    out: list[Record] = []
    best = math.inf
    for steps, loss in evals:
        best = min(best, loss) if math.isfinite(loss) else best
        out.append((steps, best))
    return out


def run_dir_timeline(run_dir: Path) -> Timeline:
    """Every trial's metrics.jsonl of an engine run dir, merged by wall time: each step row is one trial-step (a
    fork's file starts after its fork step, so the parent's steps are not counted twice), each eval row a record."""
    rows = []
    for path in sorted((run_dir / "trials").glob("*/metrics.jsonl")):
        trial = int(path.parent.name)
        for i, line in enumerate(path.read_text().splitlines()):
            if line.strip():
                row = json.loads(line)
                rows.append((row["time"], trial, i, row))
    rows.sort(key=lambda r: r[:3])  # ties in time keep each trial's own order
    steps, evals = 0, []
    for *_, row in rows:
        if "eval_loss" in row:
            evals.append((steps, row["eval_loss"]))
        else:
            steps += 1
    return Timeline(running_best(evals), steps)


def median_steps_to_reach(timelines: list[Timeline], target: float) -> float | None:
    """The median over seeds of the trial-steps to reach `target`, a seed that never did counting as infinitely
    many (so a median over only the lucky seeds cannot flatter an arm); None when that median is infinite."""
    if not timelines:
        return None
    steps = [math.inf if (s := steps_to_reach(t.records, target)) is None else s for t in timelines]
    median = statistics.median(steps)
    return None if math.isinf(median) else median
