"""Bounded, progressively downsampled metric series that training threads append to and the UI reads."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable


class Series:
    """At most `capacity` points; when full, neighbouring pairs merge (mean) so memory and draw cost stay flat
    however long the run is. Appends are O(1) amortised; reads copy under a lock."""

    __slots__ = ("_lock", "_pending", "_steps", "_values", "capacity", "stride", "version")

    def __init__(self, capacity: int = 2048):
        self.capacity = capacity
        self.stride = 1  # raw points per stored point
        self._steps: list[float] = []
        self._values: list[float] = []
        self._pending: list[tuple[float, float]] = []
        self._lock = threading.Lock()
        self.version = 0

    def append(self, step: float, value: float) -> None:
        with self._lock:
            self.version += 1
            self._pending.append((step, value))
            if len(self._pending) < self.stride:
                return
            n = len(self._pending)
            self._steps.append(sum(s for s, _ in self._pending) / n)
            self._values.append(sum(v for _, v in self._pending) / n)
            self._pending.clear()
            if len(self._steps) >= self.capacity:
                self._steps = [(a + b) / 2 for a, b in zip(self._steps[::2], self._steps[1::2], strict=False)]
                self._values = [(a + b) / 2 for a, b in zip(self._values[::2], self._values[1::2], strict=False)]
                self.stride *= 2

    def extend(self, points: Iterable[tuple[float, float]]) -> None:
        for s, v in points:
            self.append(s, v)

    def points(self, max_points: int | None = None, until: float | None = None) -> list[tuple[float, float]]:
        """Stored points (plus the not yet merged tail), bucket-averaged down to `max_points`."""
        with self._lock:
            pts = list(zip(self._steps, self._values, strict=True)) + self._pending
        if until is not None:
            pts = [p for p in pts if p[0] <= until]
        return downsample(pts, max_points) if max_points else pts

    def last(self) -> tuple[float, float] | None:
        with self._lock:
            if self._pending:
                return self._pending[-1]
            return (self._steps[-1], self._values[-1]) if self._steps else None

    def __len__(self) -> int:
        return len(self._steps) + len(self._pending)


def downsample(pts: list[tuple[float, float]], max_points: int) -> list[tuple[float, float]]:
    n = len(pts)
    if n <= max_points or max_points <= 0:
        return pts
    out = []
    for i in range(max_points):
        lo, hi = i * n // max_points, (i + 1) * n // max_points
        chunk = pts[lo:hi]
        out.append((sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk)))
    return out


METRIC_KEYS = ("loss", "eval_loss", "lr", "grad_norm", "tokens_per_s", "step_time", "mem_bytes")
RATE_WINDOW = 20  # steps the recent rate is taken over: recent enough to follow a slowdown, long enough to be calm


class TrialHistory:
    """All series of one trial. `parent` + `fork_step` let a chart draw a fork as a branch of its parent."""

    def __init__(self, capacity: int = 2048):
        self.series = {k: Series(capacity) for k in METRIC_KEYS}
        self._recent: deque[float] = deque(maxlen=RATE_WINDOW)  # the last steps' step_time (seconds)
        # Training steps per second over the last RATE_WINDOW steps (their step_time: evals and checkpoints are
        # not in it), None before the first. Computed here, on the trial's own thread at each step, and kept as
        # one float: snapshots read it without a lock.
        self.steps_per_s: float | None = None

    def record(self, row: dict[str, float]) -> None:
        step = row["step"]
        for k, s in self.series.items():
            v = row.get(k)
            if v is not None:
                s.append(step, float(v))
        st = row.get("step_time")
        if st is not None and st > 0:
            self._recent.append(float(st))
            self.steps_per_s = len(self._recent) / sum(self._recent)

    def copy_prefix(self, other: TrialHistory, until: float) -> None:
        """Seed a fork's history with its parent's curve up to the fork step."""
        for k, s in self.series.items():
            s.extend(other.series[k].points(until=until))
