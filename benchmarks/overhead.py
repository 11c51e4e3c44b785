"""Engine overhead: step time of one trial run by the engine ÷ a bare loop over the same model and data,
plus pause and kill latency (call → the trial's acknowledgement), measured in one process.

    python benchmarks/overhead.py [--steps 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from tui_tuner import Preset, Sweep
from tui_tuner.training.finetune import FineTune, prepare_data


def preset(steps: int) -> Preset:
    return Preset.from_dict({
        "name": "overhead", "model": {"name": "builtin:tiny-llama"},
        "data": {"train": "builtin:progressions", "max_length": 48},
        # eval and checkpoints off the measured steps: we time the step loop and its bookkeeping only.
        "params": {"max_steps": steps, "batch_size": 16, "eval_interval": 10**6, "learning_rate": 3e-3},
        "study": {"n_trials": 1, "concurrency": 1, "pruner": "none"},
    })


def bare_step_times(p: Preset) -> list[float]:
    _, data = prepare_data(p.model.name, p.data)
    ft = FineTune(p.model.name, p.model.method, p.params, data)
    times = []
    for _ in range(p.params.max_steps):  # type: ignore[arg-type]
        t0 = time.perf_counter()
        ft.step()
        times.append(time.perf_counter() - t0)
    return times


def in_thread(fn, *args):
    """Run fn in a fresh thread, as trials run, so thread-vs-main-thread effects are not billed to the engine."""
    import threading

    out = []
    t = threading.Thread(target=lambda: (torch.set_num_threads(1), out.append(fn(*args))))
    t.start()
    t.join()
    return out[0]


def engine_step_times(p: Preset, run_dir: Path) -> tuple[list[float], list[float]]:
    """Wall time between consecutive steps as the engine logs them (the step plus all engine bookkeeping), and
    the engine's own time between one `FineTune.step` returning and the next being called: measured within the
    same steps, so GPU clock and launch jitter between separate runs do not enter it."""
    import json

    marks: list[tuple[str, float]] = []
    real = FineTune.step

    def timed(self: FineTune):
        marks.append(("in", time.perf_counter()))
        try:
            return real(self)
        finally:
            marks.append(("out", time.perf_counter()))

    FineTune.step = timed  # type: ignore[method-assign]
    try:
        sweep = Sweep(p, run_dir).start()
        sweep.wait()
        sweep.stop()
    finally:
        FineTune.step = real  # type: ignore[method-assign]
    rows = [json.loads(x) for x in (run_dir / "trials/0/metrics.jsonl").read_text().splitlines()]
    t = [r["time"] for r in rows if "loss" in r]
    between = [b[1] - a[1] for a, b in itertools.pairwise(marks) if a[0] == "out" and b[0] == "in"]
    return [b - a for a, b in itertools.pairwise(t)], between


def latency(p: Preset, run_dir: Path) -> tuple[float, float, float]:
    sweep = Sweep(p.model_copy(update={"params": p.params.model_copy(update={"max_steps": 10**6,
                                                                               "eval_interval": 50})}),
                  run_dir).start()
    while not sweep.trials() or sweep.trials()[0].step < 60:
        time.sleep(0.01)
    t0 = time.perf_counter()
    sweep.pause(0)
    while sweep.trial(0).state != "paused":
        time.sleep(0.0005)
    pause_s = time.perf_counter() - t0
    sweep.resume_trial(0)
    while sweep.trial(0).state != "running":
        time.sleep(0.0005)
    s0 = sweep.trial(0).step
    time.sleep(1.0)
    per_step = 1.0 / max(1, sweep.trial(0).step - s0)
    at_call = sweep.trial(0).step
    t0 = time.perf_counter()
    sweep.kill(0)
    while sweep.trial(0).state != "killed":
        time.sleep(0.0005)
    kill_s = time.perf_counter() - t0
    steps_after_kill = sweep.trial(0).step - at_call
    sweep.stop()
    return pause_s, kill_s, per_step, steps_after_kill


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved bare/engine rounds (machine drift cancels)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    p = preset(args.steps)
    ratios, bare_all, eng_all, between = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_step_times(p.model_copy(update={"params": p.params.model_copy(update={"max_steps": 30})}))  # warm-up
        for i in range(args.rounds):
            # Both in a fresh thread, as trials run, so thread-vs-main-thread effects are not billed to the engine.
            bare = in_thread(bare_step_times, p)[10:]
            eng, book = engine_step_times(p, Path(tmp) / f"run-{i}")
            ratios.append(statistics.median(eng[10:]) / statistics.median(bare))
            bare_all += bare
            eng_all += eng[10:]
            between += book[10:]
        pause_s, kill_s, per_step, steps_after_kill = latency(p, Path(tmp) / "latency")
    b, e, bk = statistics.median(bare_all), statistics.median(eng_all), statistics.median(between)
    print(f"model: built-in tiny Llama + LoRA, batch 16x48, 1 thread, {args.steps} steps x {args.rounds} rounds"
          f" (first 10 of each dropped), device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"bare loop step time: median {b * 1e3:.2f} ms;  under the engine: median {e * 1e3:.2f} ms")
    print(f"ratio engine/bare per round (median of step times): {', '.join(f'{r:.3f}' for r in ratios)}"
          f"   median {statistics.median(ratios):.3f}   goal <= 1.02")
    print(f"engine work between steps (same run): median {bk * 1e3:.3f} ms = {bk / e:.2%} of a step"
          f"   -> ratio {e / (e - bk):.3f}")
    print(f"pause latency: {pause_s * 1e3:.1f} ms = {pause_s / per_step:.2f} steps   goal <= 1 step")
    print(f"kill: {steps_after_kill} step(s) ran after the call (goal <= 1); killed (PRUNED in Optuna) after"
          f" {kill_s * 1e3:.1f} ms = {kill_s / per_step:.2f} steps (includes the eval reported at the kill step)")


if __name__ == "__main__":
    main()
