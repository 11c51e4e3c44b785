"""Per-trial control: pause/resume/kill/stop flags and work requests, acted on by the trial's own thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class Killed(Exception):
    """Raised in the trial thread at a step boundary after `kill()`."""


class Stopped(Exception):
    """Raised in the trial thread at a step boundary after the sweep's `stop()`."""


class TrialControl:
    """Commands come from any thread; the trial thread applies them in `boundary()` between steps, so every
    Optuna tell of a trial happens on that trial's thread (a tell from elsewhere races its next report)."""

    def __init__(self, paused: bool = False):
        self._cond = threading.Condition()
        self._paused = paused
        self._pauses = 0  # how many pauses so far: a resume asked before the latest one must not undo it
        self._kill = False
        self._stop = False
        self._work: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._closed: BaseException | None = None
        self.acknowledged_pause = threading.Event()

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def pause_token(self) -> int:
        """Identifies the latest pause: pass it to a `resume` that is carried out later (queued)."""
        return self._pauses

    def pause(self) -> None:
        with self._cond:
            self._paused = True
            self._pauses += 1
            self._cond.notify_all()

    def resume(self, token: int | None = None) -> bool:
        """Resume; with `token` (the `pause_token` when the resume was asked), only if no pause came since: the
        latest request wins. True if it resumed."""
        with self._cond:
            if token is not None and token != self._pauses:
                return False
            self._paused = False
            self._cond.notify_all()
            return True

    def kill(self) -> None:
        with self._cond:
            self._kill = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the trial thread at its next boundary (also while paused); returns its future."""
        fut: Future[Any] = Future()
        with self._cond:
            if self._closed is not None:  # the trial thread has ended: nobody would ever run it
                fut.set_exception(self._closed)
                return fut
            self._work.append((fn, fut))
            self._cond.notify_all()
        return fut

    def fail_pending(self, exc: BaseException) -> None:
        """The trial thread is ending: fail queued work, and work submitted from now on."""
        with self._cond:
            self._closed = exc
            work, self._work = self._work, []
        for _, fut in work:
            fut.set_exception(exc)

    def boundary(self, on_pause: Callable[[], None], on_resume: Callable[[], None]) -> None:
        """Called by the trial thread between steps: runs queued work, blocks while paused, raises on kill/stop."""
        was_paused = False
        while True:
            with self._cond:
                work, self._work = self._work, []
                if not work:
                    if self._kill:
                        raise Killed
                    if self._stop:
                        raise Stopped
                    if not self._paused:
                        break
                    if was_paused:
                        self._cond.wait()
                        continue
            if work:
                for fn, fut in work:
                    try:
                        fut.set_result(fn())
                    except Exception as e:  # the caller sees it; the trial goes on
                        fut.set_exception(e)
                continue
            was_paused = True
            self.acknowledged_pause.set()
            on_pause()
        if was_paused:
            self.acknowledged_pause.clear()
            on_resume()
