"""The sweep's event log: events.jsonl on disk, a bounded in-memory tail, and listeners for rare events."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_tuner.engine.jsonl import JsonlWriter


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    kind: str  # started, paused, resumed, killed, forked, pruned, completed, failed, checkpoint, ...
    trial: int | None
    message: str
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], None]
# Routine events clients need not show (they stay in events.jsonl): a checkpoint every few steps would drown
# the decisions and state changes people read the log for.
ROUTINE_EVENTS = frozenset({"checkpoint"})

log = logging.getLogger(__name__)


class EventLog:
    def __init__(self, path: Path, tail: int = 2000):
        self._writer = JsonlWriter(path)
        self._tail: deque[Event] = deque(maxlen=tail)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def emit(self, kind: str, trial: int | None, message: str, **data: Any) -> Event:
        with self._lock:
            ev = Event(next(self._seq), time.time(), kind, trial, message, data)
            self._tail.append(ev)
            listeners = list(self._listeners)
        self._writer.write({"time": ev.time, "event": kind, "trial": trial, "message": message, **data})
        for fn in listeners:
            try:
                fn(ev)  # listeners must not block: the UI's posts a message, headless prints
            except Exception:  # a client's bug (or a closed pipe) must not end the trial that emitted
                log.exception("event listener %r failed", fn)
        return ev

    def since(self, seq: int) -> list[Event]:
        with self._lock:
            return [e for e in self._tail if e.seq > seq]

    def subscribe(self, fn: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._listeners:
                    self._listeners.remove(fn)

        return unsubscribe

    def close(self) -> None:
        self._writer.close()
