"""The learning-rate schedule PBT finds vs hand-set schedules, on the search-efficiency task, measured in one run.

    python benchmarks/pbt_schedule.py [--population 8] [--lrs 3e-3,1e-2,3e-2]

PBT starts `--population` members on a constant LR drawn from the search range and explores only the LR (×0.8 /
×1.2 every 50 steps, the bottom quarter cloning the top quarter); the hand-set arms train each of constant, linear,
cosine and wsd at each of `--lrs` (the peak LR) for the same 300 steps. Printed: the PBT winner's chain (which
trial trained which steps, at which LR: the schedule it found) and its final eval loss, beside each hand-set
schedule's best final eval loss and its LR. DeepMind's PBT paper reports PBT rediscovering warm-up then decay;
whether this small task shows it is what the LR-by-segment line says.

Measured (2 shared CPU cores, 2.5 min): PBT 8 members, 10 clones, winner 1.0016 with `0-100 #1 lr=0.00591 ·
100-300 #10 lr=0.00709`; hand-set best: constant 1.0845 (3e-3), linear 1.0573 (1e-2), cosine 1.0712 (1e-2),
wsd 1.0862 (1e-2). No warm-up-then-decay here: the winner's LR rose once.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.markov_task import SEARCH, task_preset
from tui_tuner.lineage import ancestry, segments

SCHEDULES = ("constant", "linear", "cosine", "wsd")


def run(sections: dict[str, Any], run_dir: Path) -> Any:
    """A sweep in this process, to its end; its final snapshot."""
    from tui_tuner import Sweep

    sweep = Sweep(task_preset(**sections), run_dir).start()
    try:
        if not sweep.wait(3600):
            raise RuntimeError(f"{run_dir.name}: the sweep did not finish")
        return sweep.snapshot()
    finally:
        sweep.stop(timeout=60)
        shutil.rmtree(run_dir, ignore_errors=True)


def hand_set(schedule: str, lrs: list[float], tmp: Path) -> tuple[float, float]:
    """(best final eval, its LR) of `schedule` over the peak LRs (a grid: one trial each)."""
    snap = run({"params": {"schedule": schedule},
                "search": {"learning_rate": {"type": "categorical", "choices": lrs}},
                "study": {"sampler": "grid", "n_trials": len(lrs), "concurrency": 2, "name": schedule}},
               tmp / schedule)
    done = [t for t in snap.trials if t.state == "complete" and t.eval_loss is not None]
    best = min(done, key=lambda t: t.eval_loss)
    return best.eval_loss, best.params["learning_rate"]


def pbt(population: int, tmp: Path) -> tuple[float, str, int]:
    """(the winner's final eval, its chain's LR by segment, clones made)."""
    snap = run({"params": {"schedule": "constant", "warmup_steps": 0},
                "search": {"learning_rate": SEARCH["learning_rate"]},
                "study": {"strategy": "pbt", "sampler": "random", "n_trials": population, "concurrency": population,
                          "name": "pbt"},
                "pbt": {"interval": 50, "quantile": 0.25, "resample_probability": 0.0}},
               tmp / "pbt")
    done = [t for t in snap.trials if t.state == "complete" and t.eval_loss is not None]
    best = min(done, key=lambda t: t.eval_loss)
    clones = sum(t.origin == "pbt" for t in snap.trials)
    return best.eval_loss, segments(ancestry(snap.trials, best.number)), clones


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--lrs", default="3e-3,1e-2,3e-2", help="peak LRs of the hand-set schedules")
    a = ap.parse_args()
    lrs = [float(x) for x in a.lrs.split(",")]
    with tempfile.TemporaryDirectory(prefix="pbt-schedule-") as d:
        tmp = Path(d)
        value, chain, clones = pbt(a.population, tmp)
        print(f"PBT ({a.population} members, {clones} clones): winner's final eval {value:.4f}")
        print(f"  its chain (steps, trial, LR): {chain}")
        for schedule in SCHEDULES:
            best, lr = hand_set(schedule, lrs, tmp)
            print(f"hand-set {schedule:<8} best final eval {best:.4f} at peak lr {lr:g}; PBT ÷ it "
                  f"{value / best:.3f}", flush=True)


if __name__ == "__main__":
    main()
