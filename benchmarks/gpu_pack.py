"""Packing on one GPU: 4 LoRA trials of a SmolLM2-135M-shaped model placed by the engine's policy on cuda:0
together, then the same 4 one at a time; throughput ratio, each trial's peak vs the policy's need, no OOM.

    python benchmarks/gpu_pack.py [--steps 60] [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.shapes import needs_cuda, smollm2_135m_dir


def run(model: Path, run_dir: Path, steps: int, batch: int, seq: int, together: int) -> dict:
    from tui_tuner import Preset, Sweep

    preset = Preset.from_dict({
        "name": f"pack-{together}", "model": {"name": str(model), "method": "lora"},
        "data": {"train": "builtin:progressions", "max_length": seq},
        "params": {"max_steps": steps, "batch_size": batch, "eval_interval": 10**6, "eval_batches": 2,
                   "learning_rate": 1e-3, "lora_r": 8},
        "search": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "study": {"n_trials": 4, "concurrency": together, "pruner": "none", "retry_oom": False},
        "device": {"gpus": [0]},
    })
    sweep = Sweep(preset, run_dir)
    t0 = time.perf_counter()
    sweep.start()
    most = 0
    while not sweep.wait(0.2):
        most = max(most, sum(t.state == "running" for t in sweep.trials()))
    wall = time.perf_counter() - t0
    trials = sweep.trials()
    ooms = [e for e in sweep.events_since(0) if "out of memory" in e.message]
    sweep.stop()
    return {"wall": wall, "trials": trials, "ooms": len(ooms), "most_at_once": most,
            "tokens": sum(t.step for t in trials) * batch * seq}


def mib(n: int | None) -> str:
    return f"{(n or 0) / 2**20:.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    a = ap.parse_args()
    if not needs_cuda("gpu_pack.py"):
        return 2
    import torch

    root = Path(tempfile.mkdtemp(prefix="gpu-pack-"))
    model = smollm2_135m_dir(root)
    print(f"GPU: {torch.cuda.get_device_name(0)}; 4 trials x {a.steps} steps, micro-batch {a.batch}, seq {a.seq}")
    packed = run(model, root / "packed", a.steps, a.batch, a.seq, together=4)
    alone = run(model, root / "alone", a.steps, a.batch, a.seq, together=1)
    for name, r in (("packed", packed), ("alone", alone)):
        states = ",".join(str(t.state) for t in r["trials"])
        print(f"{name}: wall {r['wall']:.1f} s, {r['tokens'] / r['wall']:.0f} tokens/s, at most "
              f"{r['most_at_once']} running at once, states {states}, OOMs {r['ooms']}")
        shared = " (the GPU's, shared by all)" if name == "packed" else ""
        for t in r["trials"]:
            print(f"  #{t.number} {t.device} need {mib(t.need_bytes)}, peak {mib(t.peak_mem_bytes)}{shared}, "
                  f"own {mib(t.own_mem_bytes)}")
    ratio = (packed["tokens"] / packed["wall"]) / (alone["tokens"] / alone["wall"])
    print(f"throughput packed / one at a time: {ratio:.2f}x; OOMs: {packed['ooms'] + alone['ooms']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
