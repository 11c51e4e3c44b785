"""UI cost: per-refresh work (p50/p95 ms) with 16 fake trials × 10 000 steps, and training step-time with the app
open vs closed while 2 real tiny trials run. Usage: .venv/bin/python benchmarks/ui.py [--window 8]"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tui_tuner.engine.events import Event
from tui_tuner.engine.history import TrialHistory
from tui_tuner.engine.snapshot import STATES, SweepSnapshot, TrialSnapshot
from tui_tuner.preset import Preset
from tui_tuner.ui.app import TuiTunerApp
from tui_tuner.ui.charts import Chart

N_TRIALS, N_STEPS = 16, 10_000
BENCH_PRESET = {
    "name": "bench", "model": {"name": "builtin:tiny-llama"},
    "data": {"train": "builtin:progressions", "max_length": 48},
    "params": {"max_steps": 100_000, "eval_interval": 50, "batch_size": 8, "eval_batches": 2, "learning_rate": 3e-3},
    "search": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "study": {"n_trials": 2, "concurrency": 2}, "checkpoints": {"interval": 500},
}


class BenchSweep:
    """16 trials whose histories are real engine `TrialHistory` objects of 10 000 steps (so downsampling costs
    what it costs in the engine); every snapshot bumps every version, the worst case for redraws."""

    preset = Preset.from_dict(BENCH_PRESET)
    run_dir = Path("/runs/demo")
    concurrency = 16

    def __init__(self) -> None:
        self.histories = []
        for n in range(N_TRIALS):
            h = TrialHistory()
            for s in range(1, N_STEPS + 1):
                row = {"step": s, "loss": 1 + 3 * math.exp(-s / (800 + 50 * n)) + 0.05 * math.sin(s / 7),
                       "lr": 1e-3 * 0.5 * (1 + math.cos(math.pi * s / N_STEPS)), "mem_bytes": 4e8}
                if s % 50 == 0:
                    row["eval_loss"] = row["loss"] + 0.05
                h.record(row)
            self.histories.append(h)
        self.tick = 0

    def snapshot(self) -> SweepSnapshot:
        self.tick += 1
        trials = tuple(TrialSnapshot(
            number=n, state="running", step=N_STEPS, total_steps=2 * N_STEPS, params={"learning_rate": 1e-3},
            overrides={}, loss=1.1, eval_loss=1.15, best_eval_loss=1.1, lr=5e-4, tokens_per_s=1e4,
            mem_bytes=4 << 28, peak_mem_bytes=4 << 28, version=self.tick) for n in range(N_TRIALS))
        counts = {s: (N_TRIALS if s == "running" else 0) for s in STATES}
        return SweepSnapshot("bench", "tpe", "median", 16, 64, 0.0, float(self.tick), False, trials, counts)

    def series(self, n: int, key: str = "loss", max_points: int | None = 200) -> list[tuple[float, float]]:
        return self.histories[n].series[key].points(max_points)

    def lr_plan(self, n: int, points: int = 200) -> list[tuple[int, float]]:
        return [(s, 1e-3 * 0.5 * (1 + math.cos(math.pi * s / 2 / N_STEPS))) for s in range(0, 2 * N_STEPS, 100)]

    def events_since(self, seq: int = 0) -> list[Event]:
        return []

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        return lambda: None

    def stop(self, timeout: float | None = None) -> None: ...


async def refresh_cost(size: tuple[int, int], charts: bool, rounds: int = 40) -> list[float]:
    """One timer tick; charts=True forces the chart redraw (done at most once a second on new data)."""
    app = TuiTunerApp(BenchSweep(), live=False)  # type: ignore[arg-type]
    times = []
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for _ in range(rounds):
            if charts:
                app._chart_sigs.clear()
            t0 = time.perf_counter()
            app.refresh_view()
            for chart in app.query(Chart):  # the plot is drawn at paint time: count it
                if chart._needs_rerender:
                    chart.render()
            times.append((time.perf_counter() - t0) * 1000)
    return times


def steps_per_s(sweep: Any, window: float) -> float:
    def total() -> int:
        return sum(t.step for t in sweep.snapshot().trials if t.state == "running")

    a, t0 = total(), time.perf_counter()
    time.sleep(window)
    return (total() - a) / (time.perf_counter() - t0)


async def steps_per_s_with_app(sweep: Any, window: float, size: tuple[int, int]) -> tuple[float, float]:
    """Training steps/s with the app open, and the UI thread's CPU time per second meanwhile (the app's loop runs
    on this thread; what it burns is taken from the training threads)."""
    app = TuiTunerApp(sweep)
    ui_clock = time.pthread_getcpuclockid(threading.get_ident())
    async with app.run_test(size=size):
        await asyncio.sleep(1.0)
        cpu0, t0 = time.clock_gettime(ui_clock), time.perf_counter()
        rate = await asyncio.to_thread(steps_per_s, sweep, window)
        return rate, (time.clock_gettime(ui_clock) - cpu0) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=5.0, help="seconds per step-rate measurement")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved closed/open rounds")
    args = ap.parse_args()
    for size in ((80, 24), (200, 60)):
        for charts, what in ((True, "tick with chart redraw"), (False, "tick, charts not due")):
            ms = sorted(asyncio.run(refresh_cost(size, charts)))
            print(f"refresh {size[0]}x{size[1]}, {N_TRIALS} trials x {N_STEPS} steps, {what}: "
                  f"p50 {statistics.median(ms):.1f} ms  p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms")

    from tui_tuner import Sweep

    os.environ.setdefault("TUI_TUNER_CACHE", os.path.join(tempfile.gettempdir(), "tui-tuner-bench-cache"))
    sweep = Sweep(Preset.from_dict(BENCH_PRESET), tempfile.mkdtemp(prefix="tui-bench-")).start()
    # Step rates drift by +-10 % between windows on this machine: interleave closed/open windows and compare
    # medians, so drift hits both sides alike.
    rates: dict[str, list[float]] = {"closed": [], "80x24": [], "200x60": []}
    ui_cpu: dict[str, list[float]] = {"80x24": [], "200x60": []}
    try:
        time.sleep(3.0)  # both trials built and stepping
        for _ in range(args.rounds):
            rates["closed"].append(steps_per_s(sweep, args.window))
            for size in ((80, 24), (200, 60)):
                rate, cpu = asyncio.run(steps_per_s_with_app(sweep, args.window, size))
                rates[f"{size[0]}x{size[1]}"].append(rate)
                ui_cpu[f"{size[0]}x{size[1]}"].append(cpu)
    finally:
        sweep.stop()
    closed = statistics.median(rates["closed"])
    print(f"training, 2 trials: app closed median {closed:.1f} steps/s "
          f"(windows: {', '.join(f'{r:.1f}' for r in rates['closed'])})")
    for name in ("80x24", "200x60"):
        rate = statistics.median(rates[name])
        print(f"training, 2 trials: app open {name} median {rate:.1f} steps/s -> step-time ratio open/closed "
              f"{closed / rate:.3f} (windows: {', '.join(f'{r:.1f}' for r in rates[name])}); UI thread CPU "
              f"{1000 * statistics.median(ui_cpu[name]):.0f} ms per s")

if __name__ == "__main__":
    main()
