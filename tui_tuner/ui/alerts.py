"""Alerts: the moments worth calling a user back for (the sweep finished, a trial failed, a new best), found by
comparing successive snapshots. No Textual here: the app rings and notifies, headless prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tui_tuner.format import fmt_float

if TYPE_CHECKING:
    from tui_tuner.engine.snapshot import SweepSnapshot
    from tui_tuner.preset import AlertsSection

AlertKind = Literal["sweep_finished", "trial_failed", "new_best"]
KINDS: tuple[AlertKind, ...] = ("sweep_finished", "trial_failed", "new_best")
LABELS: dict[str, str] = {"sweep_finished": "sweep finished", "trial_failed": "trial failed",
                          "new_best": "new best", "bell": "terminal bell"}


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    message: str
    severity: Literal["information", "warning", "error"] = "information"


class AlertWatcher:
    """Feed it every snapshot the client takes; it returns the alerts since the last one. The first snapshot
    after loading is the baseline: what had happened before this client watched (a resumed run's failed trials,
    an engine attached to after it finished) never alerts."""

    def __init__(self, config: AlertsSection) -> None:
        self.enabled: dict[str, bool] = {k: bool(getattr(config, k)) for k in KINDS}
        self.bell = config.bell
        self._watching = False
        self._failed: set[int] = set()
        self._best: float | None = None
        self._finished = False

    def toggle(self, what: str) -> bool:
        """Switch one alert kind (or "bell") on or off; returns the new setting."""
        if what == "bell":
            self.bell = not self.bell
            return self.bell
        if what not in self.enabled:
            raise ValueError(f"unknown alert {what!r} (one of {', '.join([*KINDS, 'bell'])})")
        self.enabled[what] = not self.enabled[what]
        return self.enabled[what]

    def observe(self, snap: SweepSnapshot) -> list[Alert]:
        # While loading, a resumed run's trials have not been read back yet: they are history, not news.
        if snap.phase == "loading":
            return []
        failed = {t.number: t for t in snap.trials if t.state == "failed"}
        finished = snap.phase == "finished"
        found: list[Alert] = []
        if self._watching:
            for n in sorted(failed.keys() - self._failed):
                why = failed[n].error or "no reason recorded"
                found.append(Alert("trial_failed", f"trial #{n} failed: {why}", "error"))
            if snap.best_value is not None and (self._best is None or snap.best_value < self._best):
                was = f" (was {fmt_float(self._best)})" if self._best is not None else ""
                found.append(Alert("new_best", f"new best: trial #{snap.best_trial}, eval loss "
                                               f"{fmt_float(snap.best_value)}{was}"))
            if finished and not self._finished:
                found.append(self._finished_alert(snap))
        self._watching = True
        self._failed = set(failed)
        if snap.best_value is not None:
            self._best = snap.best_value
        self._finished = finished
        return [a for a in found if self.enabled[a.kind]]

    @staticmethod
    def _finished_alert(snap: SweepSnapshot) -> Alert:
        if snap.halted:
            return Alert("sweep_finished", f"sweep halted: {snap.halted}", "error")
        best = (f"; best trial #{snap.best_trial}, eval loss {fmt_float(snap.best_value)}"
                if snap.best_trial is not None else "; no trial completed")
        return Alert("sweep_finished", f"sweep finished: {len(snap.trials)} trials{best}")
