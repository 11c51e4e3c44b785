"""SIGTERM and SIGHUP stop a sweep gracefully, like Ctrl-C; after SIGHUP nothing is written to the dead terminal."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class StopSignal(KeyboardInterrupt):
    """A stop signal, raised in the main thread as Ctrl-C raises KeyboardInterrupt (so one `except` serves both)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def exit_code(e: BaseException | int) -> int:
    """128 + the signal number, as shells report a process a signal ended: Ctrl-C 130, SIGTERM 143, SIGHUP 129."""
    signum = e if isinstance(e, int) else getattr(e, "signum", signal.SIGINT)
    return 128 + int(signum)


def detach_terminal() -> None:
    """Point stdin, stdout and stderr at /dev/null. After a hangup the terminal is gone: a write to it fails
    (EIO) or blocks, and every writer (print, logging, Textual's driver thread, interpreter teardown) would have
    to guard against it; rerouting the file descriptors guards them all at once."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
        if null > 2:
            os.close(null)


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGHUP:
        detach_terminal()
    raise StopSignal(signum)


def raise_on_stop_signals() -> None:
    """SIGTERM / SIGHUP raise StopSignal in the main thread (headless, loading, and the stop after the app)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise_stop)


def on_stop_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]) -> Callable[[], None]:
    """While an asyncio loop runs (the app), deliver SIGTERM / SIGHUP to `handler(signum)` on the loop instead of
    raising inside it; returns the function that puts the raising handlers back."""

    def deliver(signum: int) -> None:
        if signum == signal.SIGHUP:  # first, before anything else tries to draw on the dead terminal
            detach_terminal()
        handler(signum)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, deliver, sig)

    def restore() -> None:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(Exception):  # the loop may be closing
                loop.remove_signal_handler(sig)
        raise_on_stop_signals()

    return restore
