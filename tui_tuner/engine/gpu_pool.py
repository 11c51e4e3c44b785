"""The sweep's GPUs: reads the inventory, places each starting trial (engine.placement), learns needs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from tui_tuner.engine.gpu_inventory import GpuReading, Inventory
from tui_tuner.engine.need import NeedBook, NeedKey
from tui_tuner.engine.placement import GpuState, Place, Wait, place
from tui_tuner.engine.snapshot import GpuView
from tui_tuner.engine.trial import TrialRun

log = logging.getLogger(__name__)


class GpuPool:
    """Used by the scheduler thread (decide, release) and trial threads (oom, measured): each trial's GPU and
    need live on its TrialRun, so the pool itself only holds the inventory and the NeedBook."""

    def __init__(self, inventory: Inventory, gpus: list[int] | None, trials_per_gpu: int | None,
                 key_of: Callable[[TrialRun], NeedKey], estimate: Callable[[TrialRun], int]):
        self.inventory = inventory
        self.gpus = gpus  # torch indices to use; None: every visible one
        self.trials_per_gpu = trials_per_gpu
        self.book = NeedBook()
        self._key_of, self._estimate = key_of, estimate
        self.last: tuple[GpuView, ...] = ()

    def _states(self, runs: Iterable[TrialRun]) -> list[GpuState]:
        readings = [r for r in self.inventory.read() if self.gpus is None or r.index in self.gpus]
        ours: dict[int, list[tuple[int, int]]] = {r.index: [] for r in readings}
        for run in runs:
            if run.active and run.gpu is not None and run.gpu in ours:
                ours[run.gpu].append((run.number, run.need or 0))
        states = [_state(r, tuple(ours[r.index])) for r in readings]
        self.last = tuple(GpuView(s.index, s.total, s.available, s.foreign, tuple(n for n, _ in s.trials))
                          for s in states)
        return states

    def decide(self, run: TrialRun, runs: list[TrialRun]) -> Place | Wait:
        """Where `run` starts, or why it waits; sets its need (and GPU when placed)."""
        run.need = self.book.need(self._key_of(run), lambda: self._estimate(run))
        got = place(self._states(runs), run.need, self.trials_per_gpu)
        if isinstance(got, Place):
            run.gpu, run.device, run.wait_reason = got.index, f"cuda:{got.index}", None
            neighbours = [r for r in runs if r.active and r.gpu == got.index and r is not run]
            for r in [run, *neighbours] if neighbours else []:
                r.gpu_shared = True  # their peaks are shared from now on: none is one trial's need
        else:
            run.wait_reason = got.reason
        return got

    def refresh(self, runs: Iterable[TrialRun]) -> None:
        """Re-read the inventory for the System panel (the scheduler calls it when trials start or end)."""
        try:
            self._states(runs)
        except Exception as e:  # NVML hiccup: the panel keeps the last view; placement retries later
            log.warning("GPU inventory: %s", e)

    def oom(self, run: TrialRun) -> None:
        if run.need is not None:
            self.book.oom(self._key_of(run), run.need)

    def ended(self, run: TrialRun, shared: bool) -> None:
        """A trial that ran alone on its GPU gives its configuration a measured peak."""
        if not shared and run.gpu is not None and run.peak_mem:
            self.book.measured(self._key_of(run), run.peak_mem)


def _state(r: GpuReading, trials: tuple[tuple[int, int], ...]) -> GpuState:
    return GpuState(r.index, r.total, r.free, r.foreign, trials)
