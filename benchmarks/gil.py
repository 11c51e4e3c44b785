"""Threads and the GIL: N trials stepping in threads of one process vs one trial alone. Per trial: wall time
and thread CPU time per step (on CUDA the thread's CPU time is the Python and kernel-launch side of a step,
which is what the GIL serialises); and the total throughput of N together vs one alone.

    python benchmarks/gil.py [--trials N] [--steps 40] [--model tiny|smollm2] [--batch 8] [--seq 64]

On CUDA, N defaults to the number of GPUs (one trial per GPU) and trials go to cuda:0..N-1 round-robin. On a
CPU-only machine it runs on the CPU: torch releases the GIL inside its kernels, so this shows how much the
Python side of N trials contends on these cores, not what driving N GPUs from one process costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.shapes import smollm2_135m_dir
from tui_tuner.params import TrialParams
from tui_tuner.preset import DataSection
from tui_tuner.training.finetune import FineTune, prepare_data


def run(model: str, data: object, devices: list[str], steps: int, batch: int) -> list[dict]:
    """One thread per device entry; each builds its trial, waits for the others, then times `steps` steps."""
    params = TrialParams(max_steps=steps + 3, batch_size=batch, learning_rate=1e-3, lora_r=8)
    ready = threading.Barrier(len(devices))
    out: list[dict] = [{} for _ in devices]

    def trial(i: int) -> None:
        torch.set_num_threads(1)
        ft = FineTune(model, "lora", params, data, devices[i])  # type: ignore[arg-type]
        for _ in range(3):  # warm-up: allocator, autocast caches, kernels
            ft.step()
        ready.wait()
        cpu0, t0 = time.thread_time(), time.perf_counter()
        walls = [ft.step().step_time for _ in range(steps)]
        if ft.device.type == "cuda":
            torch.cuda.synchronize(ft.device)
        out[i] = {"wall": time.perf_counter() - t0, "cpu_per_step": (time.thread_time() - cpu0) / steps,
                  "step": statistics.median(walls), "device": str(ft.device)}
        ft.close()

    threads = [threading.Thread(target=trial, args=(i,)) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    n = a.trials or (torch.cuda.device_count() if cuda else 2)
    devices = [f"cuda:{i % torch.cuda.device_count()}" for i in range(n)] if cuda else ["cpu"] * n
    model = "builtin:tiny-llama" if a.model == "tiny" else str(smollm2_135m_dir(Path(tempfile.mkdtemp())))
    _, data = prepare_data(model, DataSection(train="builtin:progressions", max_length=a.seq))
    where = f"CUDA ({torch.cuda.get_device_name(0)})" if cuda else "CPU only (see the docstring: no GPU figure)"
    print(f"{where}; model {a.model}, micro-batch {a.batch}, seq {a.seq}, {a.steps} timed steps per trial")
    alone = run(model, data, devices[:1], a.steps, a.batch)[0]
    together = run(model, data, devices, a.steps, a.batch)
    rate1 = a.steps / alone["wall"]
    rate_n = sum(a.steps / r["wall"] for r in together)
    print(f"alone: {alone['step'] * 1000:.1f} ms/step wall, {alone['cpu_per_step'] * 1000:.1f} ms/step thread CPU, "
          f"{rate1:.2f} steps/s")
    for i, r in enumerate(together):
        print(f"  {n} together, trial {i} on {r['device']}: {r['step'] * 1000:.1f} ms/step wall, "
              f"{r['cpu_per_step'] * 1000:.1f} ms/step thread CPU")
    print(f"{n} together: {rate_n:.2f} steps/s in all = {rate_n / rate1:.2f}x one alone (ideal {n}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
