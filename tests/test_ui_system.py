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
