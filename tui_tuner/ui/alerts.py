"""Alerts: the moments worth calling a user back for (the sweep finished, a trial failed, a new best), found by
comparing successive snapshots, and from the sweep's own end event (a background engine stops right after it
finishes, so no snapshot may ever show it finished). No Textual here: the app rings and notifies, headless
prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from tui_tuner.format import fmt_loss

if TYPE_CHECKING:
    from tui_tuner.engine.events import Event
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
    """Feed it every snapshot the client takes, and the live events; each returns the alerts they bring. The first
    snapshot after loading is the baseline: what had happened before this client watched (a resumed run's
    failed trials, its best) never alerts."""

    def __init__(self, config: AlertsSection) -> None:
        self.enabled: dict[str, bool] = {k: bool(getattr(config, k)) for k in KINDS}
        self.bell = config.bell
        self._watching = False
        self._failed: set[int] = set()
        self._best: tuple[int, float] | None = None  # (trial, eval loss)

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
        found: list[Alert] = []
        if self._watching:
            for n in sorted(failed.keys() - self._failed):
                why = failed[n].error or "no reason recorded"
                found.append(Alert("trial_failed", f"trial #{n} failed: {why}", "error"))
            if snap.best_value is not None and (self._best is None or snap.best_value < self._best[1]):
                was = f" (was {fmt_loss(self._best[1])})" if self._best is not None else ""
                found.append(Alert("new_best", f"new best: trial #{snap.best_trial}, eval loss "
                                               f"{fmt_loss(snap.best_value)}{was}"))
        self._watching = True
        self._failed = set(failed)
        if snap.best_value is not None and snap.best_trial is not None:
            self._best = (snap.best_trial, snap.best_value)
        return [a for a in found if self.enabled[a.kind]]

    def on_event(self, ev: Event) -> list[Alert]:
        """The sweep's end, from its event ("sweep finished: budget spent" or "...: halted: why"; a halt also
        emits sweep_halted first, which is not alerted twice). Earlier processes' events are history."""
        if ev.kind != "sweep_finished" or ev.earlier:
            return []
        best = (f"; best trial #{self._best[0]}, eval loss {fmt_loss(self._best[1])}" if self._best
                else "; no trial completed")
        found = [Alert("sweep_finished", ev.message + best, "error" if "halted" in ev.message else "information")]
        return [a for a in found if self.enabled[a.kind]]
