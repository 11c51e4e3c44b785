"""Study storage cost: the journal file (the default) vs PostgreSQL (--storage, what workers on several boxes
share), at 8 concurrent trials, measured in one run: ask / report / tell latency as the engine makes them, and
the engine's overhead per training step (a torch-free trainer, so the step is nothing but the engine's work).

    python benchmarks/storage.py [--trials 8] [--steps 300] [--eval-every 10] [--url postgresql://...]

Without --url a throwaway PostgreSQL server is started (tests/pg_server.py: Debian's postgresql-15).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import tiny_preset_dict
from tests.fake_backend import FakeBackend
from tui_tuner.engine.sweep import Sweep
from tui_tuner.preset import Preset

CALLS = ("ask", "report", "should_prune", "tell", "set_attrs")


def timed(times: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[name].append(time.perf_counter() - t0)
    return wrapper


def arm(run_dir: Path, url: str | None, trials: int, steps: int, eval_every: int,
        step_s: float = 0.0) -> dict[str, Any]:
    preset = Preset.from_dict(tiny_preset_dict(
        params={"max_steps": steps, "eval_interval": eval_every},
        study={"name": f"bench-{run_dir.name}", "n_trials": trials, "concurrency": trials, "pruner": "median"},
        checkpoints={"interval": None, "keep_best": False}))
    sweep = Sweep(preset, run_dir, storage=url, backend=FakeBackend(step_s=step_s))
    times: dict[str, list[float]] = defaultdict(list)
    for name in CALLS:
        setattr(sweep.gateway, name, timed(times, name, getattr(sweep.gateway, name)))
    t0 = time.perf_counter()
    sweep.start()
    assert sweep.wait(600), "the sweep did not finish"
    wall = time.perf_counter() - t0
    done = sweep.trials()
    sweep.stop()
    total = sum(t.step for t in done)
    return {"wall": wall, "steps": total, "per_step_ms": wall * trials / total * 1e3, "times": times}


def ms(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return statistics.quantiles(xs, n=100)[int(q) - 1] * 1e3 if len(xs) > 1 else xs[0] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--step-ms", type=float, default=50.0, help="the paced arms' step time")
    ap.add_argument("--paced-steps", type=int, default=100)
    ap.add_argument("--url", help="a PostgreSQL URL to use (default: start a throwaway server)")
    a = ap.parse_args()
    server = None
    url = a.url
    if url is None:
        from tests.pg_server import PgServer

        server = PgServer().start()
        url = server.create_db()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            journal = arm(Path(tmp) / "journal", None, a.trials, a.steps, a.eval_every)
            pg = arm(Path(tmp) / "pg", url, a.trials, a.steps, a.eval_every)
            # A step that takes time, as a real one does: the storage's calls then overlap other trials' steps
            paced = [arm(Path(tmp) / f"paced-{i}", u, a.trials, a.paced_steps, a.eval_every, a.step_ms / 1e3)
                     for i, u in enumerate((None, url))]
    finally:
        if server is not None:
            server.stop()
    print(f"{a.trials} concurrent trials x {a.steps} steps, a report every {a.eval_every} steps "
          "(torch-free trainer: the engine's own work only)")
    print(f"{'call':<14}{'journal p50/p95 ms':>22}{'postgres p50/p95 ms':>24}{'ratio p50':>11}   calls")
    for name in CALLS:
        j, p = journal["times"][name], pg["times"][name]
        ratio = ms(p, 50) / ms(j, 50) if j and p else float("nan")
        print(f"{name:<14}{ms(j, 50):>11.2f} /{ms(j, 95):>8.2f}{ms(p, 50):>13.2f} /{ms(p, 95):>8.2f}"
              f"{ratio:>11.1f}   {len(p)}")
    print(f"engine time per trial step: journal {journal['per_step_ms']:.2f} ms, postgres {pg['per_step_ms']:.2f} ms"
          f" (ratio {pg['per_step_ms'] / journal['per_step_ms']:.2f}); sweep wall {journal['wall']:.1f} s vs "
          f"{pg['wall']:.1f} s")
    jp, pp = paced
    print(f"with {a.step_ms:g} ms steps: sweep throughput postgres / journal = "
          f"{(pp['steps'] / pp['wall']) / (jp['steps'] / jp['wall']):.3f} ({jp['wall']:.1f} s vs {pp['wall']:.1f} s)")


if __name__ == "__main__":
    main()
