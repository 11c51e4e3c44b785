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

from tui_tuner.engine.jsonl import JsonlWriter, read_jsonl


@dataclass(frozen=True)
class Event:
    seq: int
    time: float
    kind: str  # started, paused, resumed, killed, forked, pruned, completed, failed, checkpoint, ...
    trial: int | None
    message: str
    data: dict[str, Any] = field(default_factory=dict)
    earlier: bool = False  # read back from events.jsonl: emitted by an earlier process of this run


Listener = Callable[[Event], None]
# Routine events clients need not show (they stay in events.jsonl): a checkpoint every few steps would drown
# the decisions and state changes people read the log for.
ROUTINE_EVENTS = frozenset({"checkpoint"})

log = logging.getLogger(__name__)


class EventLog:
    """Usable from construction (clients subscribe before the sweep has loaded); nothing touches the disk until
    `open()`, which first reads back an earlier process's events when `previous` (a resumed run), so clients see
    the run's whole history with sequence numbers that continue it."""

    def __init__(self, path: Path, tail: int = 2000, previous: bool = False):
        self._path = path
        self._previous = previous
        self._writer: JsonlWriter | None = None
        self._unwritten: list[dict[str, Any]] = []  # emitted before open(), or while the file cannot be written
        self._failing = False
        self._tail: deque[Event] = deque(maxlen=tail)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def open(self) -> None:
        with self._lock:
            earlier = read_jsonl(self._path) if self._previous else []
            mine = list(self._tail)
            self._tail.clear()
            self._seq = itertools.count(1)
            for row in earlier:
                data = {k: v for k, v in row.items() if k not in ("time", "event", "trial", "message")}
                self._tail.append(Event(next(self._seq), row.get("time", 0.0), str(row.get("event", "?")),
                                        row.get("trial"), str(row.get("message", "")), data, earlier=True))
            for ev in mine:  # renumbered after the earlier ones (no client has read them: open() is at start)
                self._tail.append(Event(next(self._seq), ev.time, ev.kind, ev.trial, ev.message, ev.data))
            self._writer = JsonlWriter(self._path)
            self._write_pending(self._writer)

    def _write_pending(self, writer: JsonlWriter) -> None:
        """Under _lock: write what is queued, in order. The event log is not worth a trial: a write that fails
        (disk full, an immutable or unwritable file) keeps the rest queued for the next emit and warns once."""
        try:
            while self._unwritten:
                writer.write(self._unwritten[0])
                self._unwritten.pop(0)
        except OSError as e:
            if not self._failing:
                self._failing = True
                log.warning("cannot write %s (%s): events are kept and written once it works again",
                            self._path, e.strerror or e)
                self._tail.append(Event(next(self._seq), time.time(), "event_log_failed", None,
                                        f"cannot write {self._path.name}: {e.strerror or e}; events are kept "
                                        "and written once it works again"))
            return
        if self._failing:
            self._failing = False
            log.warning("%s is writable again: the kept events are written", self._path)

    @property
    def is_open(self) -> bool:
        return self._writer is not None and not self._writer.closed

    def emit(self, kind: str, trial: int | None, message: str, **data: Any) -> Event:
        row = {"time": 0.0, "event": kind, "trial": trial, "message": message, **data}
        with self._lock:
            ev = Event(next(self._seq), time.time(), kind, trial, message, data)
            row["time"] = ev.time
            self._tail.append(ev)
            listeners = list(self._listeners)
            self._unwritten.append(row)
            writer = self._writer
            if writer is not None:
                self._write_pending(writer)
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
        if self._writer is not None:
            with self._lock:
                self._write_pending(self._writer)
            self._writer.close()
