"""Event log panel: the run's events, each once, in sequence order, wrapped to the panel's width, newest last."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable

from rich.text import Text
from textual.events import Resize, Show
from textual.widgets import RichLog

from tui_tuner.engine.events import ROUTINE_EVENTS, Event
from tui_tuner.ui.status_line import fmt_elapsed

KIND_STYLE = {"failed": "bold red", "checkpoint_failed": "red", "killed": "magenta", "kill_requested": "magenta",
              "pruned": "magenta", "complete": "cyan", "forked": "bold blue", "paused": "yellow",
              "resumed": "green", "started": "green", "starting": "green", "resuming": "green",
              "cancelled": "dim", "sweep_finished": "bold", "sweep_stopped": "bold",
              "sweep_halted": "bold red", "resume_queued": "yellow", "interrupted": "yellow", "oom_retry": "yellow"}
MAX_EVENTS = 1000  # shown; events.jsonl keeps them all
SEEN_WINDOW = 4096  # listeners run outside the engine's lock, so events may arrive a few places out of order


class EventLogPanel(RichLog):
    """Events are kept here, not only as rendered lines, so the panel can redraw them at a new width (a resize,
    a tab shown for the first time) and scroll to the newest when it is shown again: a RichLog written while
    hidden renders at a width it does not have and scrolls to an end it cannot see."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(wrap=True, min_width=1, markup=False, **kwargs)  # type: ignore[arg-type]
        self.started_at = 0.0
        self.events: list[Event] = []  # shown (non-routine) events, by seq
        self.last_seq = 0
        self._seen: set[int] = set()  # seqs within SEEN_WINDOW of last_seq already taken
        self._shown: set[tuple[float, str, int | None, str]] = set()  # the identities of `events`
        self._drawn_width = 0  # content width the current lines were rendered at; 0: not rendered
        self._stale = True  # events arrived that the rendered lines lack

    # -- the model -----------------------------------------------------------------------------
    def add(self, ev: Event) -> bool:
        """Take one event (from the backfill or the subscription, in any order); False if it was a repeat."""
        if ev.seq in self._seen or ev.seq <= self.last_seq - SEEN_WINDOW:
            return False
        self._seen.add(ev.seq)
        if ev.seq > self.last_seq:
            self.last_seq = ev.seq
            if len(self._seen) > 2 * SEEN_WINDOW:
                self._seen = {s for s in self._seen if s > self.last_seq - SEEN_WINDOW}
        if ev.kind in ROUTINE_EVENTS:
            return True
        if _identity(ev) in self._shown:  # renumbered: a resumed run's open() numbers the events it had before
            return False  # after the earlier process's, and a client that saw them before has them twice
        self._shown.add(_identity(ev))
        newest = not self.events or ev.seq > self.events[-1].seq
        bisect.insort(self.events, ev, key=lambda e: e.seq)
        if len(self.events) > MAX_EVENTS:
            del self.events[: len(self.events) - MAX_EVENTS]
            self._shown = {_identity(e) for e in self.events}
            self._stale = True
        if newest and not self._stale and self._drawn_width == self._width() > 0:
            self.write(self._line(ev), width=self._drawn_width)  # the common case: append one line, scroll to it
        else:
            self._stale = True
            self._redraw()
        return True

    def reload(self, events: Iterable[Event], started_at: float | None = None) -> None:
        """Start over from the engine's log (after the sweep loaded: a resumed run's earlier events are in it,
        and its sequence numbers are final from then on)."""
        if started_at is not None:
            self.started_at = started_at
        self.events, self.last_seq, self._seen, self._shown = [], 0, set(), set()
        self._stale = True
        for ev in events:
            self.add(ev)
        self._redraw()

    # -- drawing -------------------------------------------------------------------------------
    def _width(self) -> int:
        return self.scrollable_content_region.width if self._size_known and self.display else 0

    def _redraw(self) -> None:
        width = self._width()
        if not width:  # hidden, or not laid out yet: on_show / on_resize redraw
            return
        self.clear()
        self._drawn_width, self._stale = width, False
        for ev in self.events:
            # At the panel's width, given: RichLog otherwise measures against the app console, whose width is
            # the terminal's at start, so a resize would keep the old wrap.
            self.write(self._line(ev), width=width, scroll_end=False)
        self.scroll_end(animate=False, immediate=False, x_axis=False)

    def on_resize(self, event: Resize) -> None:
        super().on_resize(event)
        if self._stale or self._width() != self._drawn_width:
            self._redraw()
        else:  # shorter (a smaller terminal, or the trials table grew): the end moved down, and so does the view,
            self.scroll_end(animate=False, immediate=False, x_axis=False)  # as every write scrolls to the end

    def on_show(self, _event: Show) -> None:
        if self._stale or self._width() != self._drawn_width:
            self._redraw()
        else:  # written while hidden, its scroll-to-end saw no height: the newest line is below the view
            self.scroll_end(animate=False, immediate=False, x_axis=False)

    def _line(self, ev: Event) -> Text:
        if ev.earlier:  # an earlier process of this run: this sweep's elapsed time means nothing for it
            when, style = time.strftime("%m-%d %H:%M", time.localtime(ev.time)), "dim"
        elif self.started_at:
            when, style = fmt_elapsed(max(0.0, ev.time - self.started_at)), "dim"
        else:
            when, style = "--:--:--", "dim"
        return Text.assemble((when + " ", style), (ev.message, KIND_STYLE.get(ev.kind, "")))


def _identity(ev: Event) -> tuple[float, str, int | None, str]:
    """What makes an event itself whatever its sequence number: no two events share a time, kind and message."""
    return ev.time, ev.kind, ev.trial, ev.message
