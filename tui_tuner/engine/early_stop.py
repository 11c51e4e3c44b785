"""Early stopping: counts evals without improvement on a trial's best, from its eval history (no hidden state)."""

from __future__ import annotations

from collections.abc import Iterable

from tui_tuner.format import fmt_loss


class EarlyStop:
    """Fed every eval of a trial in step order. An eval improves when it is more than `min_delta` below the
    reference (the last eval that improved); `stale` counts the evals since. The reference moves only on an
    improvement, so a long run of tiny gains (each under min_delta) still runs out of patience. `best` is the
    plain minimum, the value the trial is told with."""

    def __init__(self, patience: int | None, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.stale = 0
        self._ref: float | None = None

    @classmethod
    def replay(cls, patience: int | None, min_delta: float, evals: Iterable[tuple[float, float]]) -> EarlyStop:
        """The counter as it stands after `evals` ((step, eval loss) pairs): a resumed trial, or one whose
        patience a fork changed, counts on from its own history with the params it runs with now."""
        stop = cls(patience, min_delta)
        for step, value in evals:
            stop.observe(int(step), value)
        return stop

    def observe(self, step: int, value: float) -> bool:
        """Count one eval; True when the trial should stop now."""
        if self.best is None or value < self.best:
            self.best, self.best_step = value, step
        if self._ref is None or value < self._ref - self.min_delta:
            self._ref, self.stale = value, 0
        else:
            self.stale += 1
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience

    def reason(self) -> str:
        """Why it stopped, in the words of the trial's `early_stop_reason` attr."""
        return (f"no eval improvement > {self.min_delta:g} in {self.stale} evals "
                f"(best {fmt_loss(self.best)} at step {self.best_step})")
