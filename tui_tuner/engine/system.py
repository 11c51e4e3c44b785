"""GPU/system sampler: a daemon thread double-buffers NVML per-GPU data (else CPU/RAM via psutil); never blocks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    mem_used: int
    mem_total: int
    util: float | None  # percent
    temperature: float | None  # °C
    power_w: float | None
    power_limit_w: float | None


@dataclass(frozen=True)
class SystemSample:
    time: float
    gpus: tuple[GpuSample, ...] = ()
    cpu_percent: float = 0.0
    ram_used: int = 0
    ram_total: int = 0
    reason: str | None = None  # why there is no GPU data, one line


def _nvml_reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return f"no NVIDIA GPU: {text.splitlines()[0]}"


class NvmlReader:
    """Reads every GPU through pynvml; `ok` is False (with `reason`) when the driver or library is missing."""

    def __init__(self) -> None:
        self.ok = False
        self.reason: str | None = None
        self._handles: list[object] = []
        self._names: list[str] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._names = [_decode(pynvml.nvmlDeviceGetName(h)) for h in self._handles]
            self._nvml = pynvml
            self.ok = count > 0
            if not self.ok:
                self.reason = "no NVIDIA GPU: the driver reports 0 devices"
        except Exception as e:  # NVMLError, ImportError, OSError: any of them means "no GPU data"
            self.reason = _nvml_reason(e)

    def read(self) -> tuple[GpuSample, ...]:
        if not self.ok:
            return ()
        nv = self._nvml
        out = []
        for i, h in enumerate(self._handles):
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            out.append(GpuSample(
                index=i, name=self._names[i], mem_used=int(mem.used), mem_total=int(mem.total),
                util=_try(lambda h=h: float(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
                temperature=_try(lambda h=h: float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))),
                power_w=_try(lambda h=h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),
                power_limit_w=_try(lambda h=h: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0),
            ))
        return tuple(out)


def _decode(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _try(fn: Callable[[], float]) -> float | None:
    try:
        return fn()
    except Exception:
        return None


def sample_once(nvml: NvmlReader | None = None) -> SystemSample:
    """One sample, never raising: GPU errors become `reason`."""
    nvml = nvml or NvmlReader()
    gpus: tuple[GpuSample, ...] = ()
    reason = nvml.reason
    if nvml.ok:
        try:
            gpus = nvml.read()
        except Exception as e:
            reason = _nvml_reason(e)
    vm = psutil.virtual_memory()
    return SystemSample(time=time.time(), gpus=gpus, cpu_percent=psutil.cpu_percent(interval=None),
                        ram_used=int(vm.total - vm.available), ram_total=int(vm.total), reason=reason)


class SystemSampler:
    """Daemon thread sampling every `interval` s into a back buffer, swapped in under a lock (nvitop-style)."""

    def __init__(self, interval: float = 2.0):
        self.interval = interval
        self._lock = threading.Lock()
        self._front: SystemSample | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SystemSampler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tui-tuner-system", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        nvml = NvmlReader()
        psutil.cpu_percent(interval=None)  # prime: the first call always returns 0.0
        while not self._stop.is_set():
            back = sample_once(nvml)
            with self._lock:
                self._front = back
            self._stop.wait(self.interval)

    def latest(self) -> SystemSample | None:
        with self._lock:
            return self._front

    def stop(self) -> None:
        self._stop.set()
