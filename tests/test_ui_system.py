"""The system sampler: no-GPU fallback to CPU/RAM with a reason, never a traceback; the double buffer fills."""

from __future__ import annotations

import time
from pathlib import Path

import pynvml
import pytest

from tui_tuner.engine import system
from tui_tuner.engine.system import NvmlReader, SystemSampler, sample_once


def _raise_not_found() -> None:
    raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def test_no_gpu_falls_back_to_cpu_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlInit", _raise_not_found)
    reader = NvmlReader()
    assert not reader.ok
    assert reader.reason is not None and reader.reason.startswith("no NVIDIA GPU:")
    assert "\n" not in reader.reason
    s = sample_once(reader)
    assert s.gpus == ()
    assert s.reason == reader.reason
    assert s.ram_total > 0 and 0 <= s.ram_used <= s.ram_total
    assert 0.0 <= s.cpu_percent <= 100.0 * 64


def test_any_exception_from_nvml_becomes_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    monkeypatch.setattr(pynvml, "nvmlInit", boom)
    assert NvmlReader().reason == "no NVIDIA GPU: libnvidia-ml.so.1: cannot open shared object file"


def test_memory_panel_says_when_trials_share_a_device_peak() -> None:
    from tui_tuner.engine.snapshot import SweepSnapshot, TrialSnapshot
    from tui_tuner.ui.system_panel import system_text

    def trial(n: int, device: str) -> TrialSnapshot:
        return TrialSnapshot(number=n, state="running", step=5, total_steps=10, params={}, overrides={},
                             mem_bytes=8 << 30, peak_mem_bytes=8 << 30, own_mem_bytes=(n + 1) << 20, device=device)

    def text(*trials: TrialSnapshot) -> str:
        snap = SweepSnapshot(study_name="s", sampler="tpe", pruner="none", concurrency=3, n_trials=3,
                             started_at=0.0, elapsed=1.0, finished=False, trials=trials)
        return system_text(None, snap, 100).plain

    shared = text(trial(0, "cuda:0"), trial(1, "cuda:0"), trial(2, "cuda:1")).splitlines()
    line = {n: next(x for x in shared if x.startswith(f" #{n} ")) for n in range(3)}
    assert "own   1.00M" in line[0] and "GPU peak" in line[0] and "shared by 2 on cuda:0" in line[0]
    assert "shared by 2 on cuda:0" in line[1]
    assert "shared" not in line[2]  # alone on its GPU: the peak is its own
    alone = text(trial(0, "cpu")).splitlines()
    assert any("process RSS" in x and "shared" not in x for x in alone)


def test_sampler_thread_fills_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynvml, "nvmlInit", _raise_not_found)
    sampler = SystemSampler(interval=0.05).start()
    try:
        deadline = time.monotonic() + 5
        while sampler.latest() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        first = sampler.latest()
        assert first is not None and first.reason
        time.sleep(0.2)
        assert sampler.latest() is not None and sampler.latest().time >= first.time  # type: ignore[union-attr]
    finally:
        sampler.stop()


def test_system_module_has_no_textual_import() -> None:
    src = Path(system.__file__).read_text()
    assert "textual" not in src


def test_system_panel_lists_each_gpu_with_its_trials_and_the_free_memory_placement_uses() -> None:
    from tui_tuner.engine.snapshot import GpuView, SweepSnapshot, TrialSnapshot
    from tui_tuner.ui.system_panel import system_text

    g = 1 << 30
    trials = (TrialSnapshot(number=1, state="running", step=5, total_steps=10, params={}, overrides={},
                            peak_mem_bytes=9 * g, own_mem_bytes=2 * g, device="cuda:0"),
              TrialSnapshot(number=2, state="waiting", step=0, total_steps=10, params={}, overrides={},
                            wait_reason="waiting for GPU memory: needs 30.0G, most free 20.0G on cuda:0"))
    snap = SweepSnapshot(study_name="s", sampler="tpe", pruner="none", concurrency=2, n_trials=2, started_at=0.0,
                         elapsed=1.0, finished=False, trials=trials,
                         gpus=(GpuView(0, 80 * g, 20 * g, 0, (1,)), GpuView(1, 80 * g, 5 * g, 75 * g)))
    lines = system_text(None, snap, 80).plain.splitlines()
    assert " cuda:0 free  20.0G/80.0G  other procs     0B  trials #1" in lines
    assert " cuda:1 free  5.00G/80.0G  other procs  75.0G  trials -" in lines
    assert " #2 waiting for GPU memory: needs 30.0G, most free 20.0G on cuda:0" in lines
    assert any(x.startswith(" #1 ") and "own   2.00G" in x for x in lines)
    assert all(len(x) <= 80 for x in lines)
