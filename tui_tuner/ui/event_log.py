"""Event log panel: one line per engine event, time shown relative to the sweep start."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import RichLog

from tui_tuner.engine.events import ROUTINE_EVENTS, Event
from tui_tuner.ui.status_line import fmt_elapsed

KIND_STYLE = {"failed": "bold red", "checkpoint_failed": "red", "killed": "magenta", "kill_requested": "magenta",
              "pruned": "magenta", "complete": "cyan", "forked": "bold blue", "paused": "yellow",
              "resumed": "green", "started": "green", "sweep_finished": "bold", "sweep_stopped": "bold",
              "sweep_halted": "bold red", "resume_queued": "yellow", "interrupted": "magenta"}


class EventLogPanel(RichLog):
    """Appends events in sequence order; repeats (backfill racing the subscription) are dropped."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(max_lines=1000, wrap=False, markup=False, **kwargs)  # type: ignore[arg-type]
        self.last_seq = 0
        self.started_at = 0.0

    def add(self, ev: Event) -> None:
        if ev.seq <= self.last_seq:
            return
        self.last_seq = ev.seq
        if ev.kind in ROUTINE_EVENTS:
            return
        when = fmt_elapsed(max(0.0, ev.time - self.started_at)) if self.started_at else "--:--:--"
        self.write(Text.assemble((when + " ", "dim"), (ev.message, KIND_STYLE.get(ev.kind, ""))))
