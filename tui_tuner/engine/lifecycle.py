"""Trial states, the table of legal moves between them, and the one function that makes a move."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol


class TrialState(StrEnum):
    """What a trial is doing, as the engine and every client see it (a str: `state == "running"` holds)."""

    WAITING = "waiting"  # queued in Optuna (enqueued, forked, or left queued by a stop); no thread yet
    STARTING = "starting"  # its thread is building the model and restoring its checkpoint
    RUNNING = "running"
    PAUSED = "paused"
    INTERRUPTED = "interrupted"  # stopped by a sweep stop or a crash, checkpointed; resume continues it as itself
    PARKED = "parked"  # promotion: reached the first rung (promote.t1), checkpointed, waits for the decision;
    # RUNNING in Optuna (samplers see it as complete at its rung eval), no thread
    COMPLETE = "complete"
    PRUNED = "pruned"  # by the pruner
    KILLED = "killed"  # by the user; Optuna PRUNED with stopped_by_user, so the sampler learns from it
    FAILED = "failed"
    CANCELLED = "cancelled"  # a queued trial the user removed before it ran; Optuna FAIL with cancelled_by_user


S = TrialState
ACTIVE = frozenset({S.STARTING, S.RUNNING, S.PAUSED})  # a thread owns the trial
FINISHED = frozenset({S.COMPLETE, S.PRUNED, S.KILLED, S.FAILED, S.CANCELLED})  # no move leads out of these

# Every legal move, and the event kind it emits: the event vocabulary is derived from the moves, so the two
# cannot drift. A move that is not here is a bug in the engine, not a user error.
TRANSITIONS: dict[tuple[TrialState, TrialState], str] = {
    (S.WAITING, S.STARTING): "starting",
    (S.WAITING, S.CANCELLED): "cancelled",
    (S.WAITING, S.FAILED): "failed",  # its params turned out invalid when it was asked
    (S.WAITING, S.INTERRUPTED): "interrupted",  # asked just as the sweep stopped: resume starts it
    (S.INTERRUPTED, S.STARTING): "resuming",
    (S.STARTING, S.RUNNING): "started",
    (S.STARTING, S.PAUSED): "paused",  # a trial paused at the stop comes back paused
    (S.STARTING, S.INTERRUPTED): "interrupted",
    (S.STARTING, S.KILLED): "killed",
    (S.STARTING, S.FAILED): "failed",
    (S.RUNNING, S.PAUSED): "paused",
    (S.RUNNING, S.INTERRUPTED): "interrupted",
    (S.RUNNING, S.COMPLETE): "complete",
    (S.RUNNING, S.PRUNED): "pruned",
    (S.RUNNING, S.KILLED): "killed",
    (S.RUNNING, S.FAILED): "failed",
    (S.PAUSED, S.RUNNING): "resumed",
    (S.PAUSED, S.INTERRUPTED): "interrupted",
    (S.PAUSED, S.KILLED): "killed",
    (S.PAUSED, S.FAILED): "failed",
    (S.RUNNING, S.PARKED): "parked",
    (S.PARKED, S.STARTING): "promoted",  # continues from its rung checkpoint, under its own number
    (S.PARKED, S.PRUNED): "pruned",  # not promoted
    (S.PARKED, S.KILLED): "killed",  # the user killed it while it waited
}
EVENT_KINDS = frozenset(TRANSITIONS.values())


class IllegalTransition(RuntimeError):
    """A move the table does not allow: the engine's own bug, raised loudly rather than showing a wrong state."""


class TrialRecord(Protocol):
    number: int
    state: TrialState
    version: int
    step: int
    started_at: float | None
    finished_at: float | None


Emit = Callable[..., Any]  # EventLog.emit(kind, trial, message, **data)


class Lifecycle:
    """Makes every state move of every trial. `lock` is the registry lock that also guards which trials exist,
    so a reader holding it sees each trial in exactly one state; events are emitted after it is released (their
    listeners print and post to the UI, and must never run under an engine lock)."""

    def __init__(self, lock: threading.Lock | threading.RLock, emit: Emit, wake: Callable[[], None]):
        self.lock = lock
        self._emit = emit
        self._wake = wake

    def move(self, rec: TrialRecord, to: TrialState, message: str, **data: Any) -> None:
        """Check the move against TRANSITIONS, apply it, bump the version, wake the scheduler, emit the event."""
        with self.lock:
            kind = self.check(rec.state, to, rec.number)
            rec.state = to
            rec.version += 1
            now = time.time()
            if to is S.STARTING:
                rec.started_at, rec.finished_at = now, None
            elif to in FINISHED or to is S.INTERRUPTED:
                rec.finished_at = now
        self._wake()
        self._emit(kind, rec.number, message, step=rec.step, **data)

    @staticmethod
    def check(frm: TrialState, to: TrialState, number: int | None = None) -> str:
        """The event kind of a legal move; IllegalTransition otherwise."""
        kind = TRANSITIONS.get((frm, to))
        if kind is None:
            raise IllegalTransition(f"trial {number}: illegal move {frm} -> {to}")
        return kind
