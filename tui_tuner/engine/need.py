"""How much GPU memory a trial is expected to need: an earlier trial's measured peak for the same configuration,
else the backend's conservative estimate; an OOM raises what is recorded for that configuration."""

from __future__ import annotations

import threading
from collections.abc import Callable

# (model, method, optimizer, micro-batch, sequence length): the optimizer's state is a share of the need.
NeedKey = tuple[str, str, str, int, int]

OOM_FACTOR = 1.5  # an OOM says the need was at least this much more than what was allowed for
MEASURED_MARGIN = 1.1  # a measured peak plus room for allocator fragmentation


class NeedBook:
    """Thread-safe: trial threads record peaks and OOMs, the scheduler reads needs."""

    def __init__(self) -> None:
        self._measured: dict[NeedKey, int] = {}
        self._floor: dict[NeedKey, int] = {}  # raised by OOMs: never go below it again
        self._lock = threading.Lock()

    def need(self, key: NeedKey, estimate: Callable[[], int]) -> int:
        """The measured peak (with a margin) when there is one, else `estimate()`; never below an OOM's floor."""
        with self._lock:
            measured, floor = self._measured.get(key), self._floor.get(key, 0)
        base = round(measured * MEASURED_MARGIN) if measured is not None else estimate()
        return max(base, floor)

    def measured(self, key: NeedKey, peak: int) -> None:
        """A trial of `key` ran alone on its GPU and peaked at `peak` bytes (the highest such peak is kept)."""
        with self._lock:
            self._measured[key] = max(peak, self._measured.get(key, 0))

    def oom(self, key: NeedKey, allowed: int) -> None:
        """A trial of `key` placed with `allowed` bytes ran out of memory: the next one like it needs more."""
        with self._lock:
            self._floor[key] = max(self._floor.get(key, 0), round(allowed * OOM_FACTOR))
            self._measured.pop(key, None)  # that peak was measured somewhere it did not OOM: it is not the need
