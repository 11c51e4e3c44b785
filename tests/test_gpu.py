"""The CUDA path: run where a GPU is present, skipped cleanly elsewhere."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tui_tuner.params import TrialParams
from tui_tuner.preset import DataSection

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_fine_tune_on_cuda_with_autocast_reports_device_memory():
    from tui_tuner.training.finetune import FineTune, prepare_data

    _, data = prepare_data("builtin:tiny-llama", DataSection(train="builtin:progressions", max_length=48))
    ft = FineTune("builtin:tiny-llama", "lora", TrialParams(max_steps=30, batch_size=16, learning_rate=1e-2), data)
    assert ft.device.type == "cuda" and ft.amp_dtype in (torch.bfloat16, torch.float16)
    before = ft.evaluate()
    for _ in range(30):
        m = ft.step()
    assert math.isfinite(m.loss) and ft.evaluate() < before
    assert m.mem_bytes == torch.cuda.max_memory_allocated(ft.device) > 0


def test_system_sampler_reads_the_gpus():
    from tui_tuner.engine.system import SystemSampler

    sampler = SystemSampler(interval=0.1).start()
    try:
        deadline = time.monotonic() + 10
        while (sample := sampler.latest()) is None or not sample.gpus:
            assert time.monotonic() < deadline, getattr(sample, "reason", None)
            time.sleep(0.05)
    finally:
        sampler.stop()
    assert sample.reason is None and len(sample.gpus) == torch.cuda.device_count()
    assert all(0 < g.mem_used <= g.mem_total for g in sample.gpus)


def test_three_trials_pack_on_one_real_gpu_each_with_its_device_and_own_memory(tmp_path):
    from tests.conftest import tiny_preset_dict, wait_for
    from tui_tuner import Preset, Sweep

    raw = tiny_preset_dict(study={"n_trials": 3, "concurrency": 3, "pruner": "none"},
                           device={"gpus": [0], "trials_per_gpu": 3}, params={"max_steps": 60, "eval_interval": 20})
    sweep = Sweep(Preset.from_dict(raw), tmp_path / "run")
    try:
        sweep.start()
        wait_for(lambda: sum(t.state == "running" and t.own_mem_bytes is not None for t in sweep.trials()) == 3,
                 120, "3 trials running together on cuda:0")
        snap = sweep.snapshot()
        assert [g.index for g in snap.gpus] == [0] and sorted(snap.gpus[0].trials) == [0, 1, 2]
        assert all(t.device == "cuda:0" and t.need_bytes and 0 < t.own_mem_bytes < t.need_bytes
                   for t in snap.trials)
        assert len({t.own_mem_bytes for t in snap.trials}) == 1  # same shapes: same own memory, counted per trial
        assert sweep.wait(300)
        assert [t.state for t in sweep.trials()] == ["complete"] * 3
    finally:
        sweep.stop(timeout=60)
