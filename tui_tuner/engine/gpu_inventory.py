"""The GPUs a sweep may place trials on, read through NVML (nvidia-ml-py), in torch's numbering."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    index: int  # torch's index: the position in CUDA_VISIBLE_DEVICES
    total: int
    free: int
    foreign: int  # memory of processes other than this one


class Inventory(Protocol):
    def read(self) -> list[GpuReading]: ...


def visible_nvml_ids(env: str | None, count: int) -> list[str | int]:
    """NVML indices (or UUID prefixes) of the GPUs torch sees, in torch's order: CUDA_VISIBLE_DEVICES is
    respected as CUDA reads it (a list of indices or UUIDs; an entry that is not valid ends the list)."""
    if env is None:
        return list(range(count))
    out: list[str | int] = []
    for part in env.split(","):
        part = part.strip()
        if part.isdigit() and int(part) < count:
            out.append(int(part))
        elif part.startswith(("GPU-", "MIG-")):
            out.append(part)
        else:
            break
    return out


class NvmlInventory:
    """Free memory per visible GPU, and what other processes use (NVML's per-process list; where it cannot
    see other processes, e.g. in a container, everything that is not this process's own torch memory)."""

    def __init__(self, own_bytes: Any = None) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nv = pynvml
        count = pynvml.nvmlDeviceGetCount()
        self._handles = []
        for ident in visible_nvml_ids(os.environ.get("CUDA_VISIBLE_DEVICES"), count):
            if isinstance(ident, int):
                self._handles.append(pynvml.nvmlDeviceGetHandleByIndex(ident))
            else:
                self._handles.append(_by_uuid(pynvml, ident, count))
        self._own = own_bytes  # index -> bytes this process holds there (torch's reserved memory)

    def read(self) -> list[GpuReading]:
        nv, pid, out = self._nv, os.getpid(), []
        for i, h in enumerate(self._handles):
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            try:
                procs = nv.nvmlDeviceGetComputeRunningProcesses(h)
                foreign = sum(int(p.usedGpuMemory or 0) for p in procs if p.pid != pid)
                seen_self = any(p.pid == pid for p in procs)
            except nv.NVMLError:
                foreign, seen_self = 0, False
            if not seen_self and self._own is not None:  # other pids hidden: all but our own is foreign
                foreign = max(foreign, int(mem.used) - int(self._own(i)))
            out.append(GpuReading(i, int(mem.total), int(mem.free), foreign))
        return out


def _by_uuid(nv: Any, prefix: str, count: int) -> Any:
    for n in range(count):
        h = nv.nvmlDeviceGetHandleByIndex(n)
        uuid = nv.nvmlDeviceGetUUID(h)
        if (uuid.decode() if isinstance(uuid, bytes) else uuid).startswith(prefix):
            return h
    raise ValueError(f"CUDA_VISIBLE_DEVICES names {prefix}, which NVML does not list")


class TorchInventory:
    """Where NVML cannot be read (no nvidia-ml-py, a driver without it): torch's own view of free memory.
    It cannot tell other processes apart, so whatever this process's allocator does not hold counts as foreign."""

    def read(self) -> list[GpuReading]:
        import torch

        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            out.append(GpuReading(i, int(total), int(free), max(0, total - free - torch.cuda.memory_reserved(i))))
        return out


def default_inventory(own_bytes: Any) -> Inventory:
    """NVML when it can be read, else torch's view (logged once: placement still works, foreign memory is coarse)."""
    try:
        return NvmlInventory(own_bytes)
    except Exception as e:  # ImportError, NVMLError, OSError: no NVML, but CUDA works
        log.warning("GPU placement reads free memory through torch: NVML is not available (%s)", e)
        return TorchInventory()
