"""Which GPU a trial starts on: a pure function of a device inventory and the trial's expected memory need."""

from __future__ import annotations

from dataclasses import dataclass

from tui_tuner.format import fmt_bytes


@dataclass(frozen=True)
class GpuState:
    """One GPU as placement sees it. `free` is what the driver reports free now; `reserved` is the need of each
    of our trials on it (a trial that has just started has not allocated its memory yet, so the driver's free
    alone would let the next trial land on memory already promised)."""

    index: int  # torch's index (cuda:N), after CUDA_VISIBLE_DEVICES
    total: int
    free: int
    foreign: int  # used by other processes
    trials: tuple[tuple[int, int], ...] = ()  # (trial number, reserved bytes) of our trials on it

    @property
    def available(self) -> int:
        """What a new trial may count on: the lower of the driver's free and what our reservations leave."""
        promised = self.total - self.foreign - sum(r for _, r in self.trials)
        return max(0, min(self.free, promised))


@dataclass(frozen=True)
class Place:
    index: int


@dataclass(frozen=True)
class Wait:
    """Fits nowhere now: what it needs and the most any GPU has for it."""

    need: int
    most_free: int
    on: int | None  # the GPU with the most free memory (None: every GPU is at its trial cap)
    capped: bool = False

    @property
    def reason(self) -> str:
        if self.capped:
            return "waiting for a GPU: every GPU has device.trials_per_gpu trials"
        return (f"waiting for GPU memory: needs {fmt_bytes(self.need)}, most free {fmt_bytes(self.most_free)}"
                f" on cuda:{self.on}")


def place(gpus: list[GpuState], need: int, trials_per_gpu: int | None = None) -> Place | Wait:
    """The GPU with the most available memory among those under the cap where `need` fits (so trials spread
    over empty GPUs first and pack onto one only when they fit); ties go to fewer trials, then the lower index."""
    open_ = [g for g in gpus if trials_per_gpu is None or len(g.trials) < trials_per_gpu]
    if not open_:
        return Wait(need, 0, None, capped=True)
    best = min(open_, key=lambda g: (-g.available, len(g.trials), g.index))
    if best.available >= need:
        return Place(best.index)
    return Wait(need, best.available, best.index)
