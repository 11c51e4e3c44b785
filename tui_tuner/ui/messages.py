"""Messages posted into the app from other threads (engine events, background command results)."""

from __future__ import annotations

from textual.message import Message

from tui_tuner.engine.events import Event
from tui_tuner.engine.snapshot import Insight


class EngineEvent(Message):
    """One engine event, posted from the engine thread by the subscription callback."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class CommandDone(Message):
    """A command run off the UI thread (fork, enqueue, stop) finished; `error` is its one-line failure."""

    def __init__(self, what: str, result: object = None, error: str | None = None) -> None:
        super().__init__()
        self.what = what
        self.result = result
        self.error = error


class SweepLoaded(Message):
    """The sweep's start() returned or raised (the app keeps the error in `load_error`)."""


class InsightReady(Message):
    """The sweep's insight, fetched off the UI thread (an evaluation, or a request to a remote engine)."""

    def __init__(self, insight: Insight) -> None:
        super().__init__()
        self.insight = insight
