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


def _hung_up() -> None:
    """First thing on SIGHUP, inside the handler: leave the dead terminal before anything writes to it."""
    detach_terminal()
    # The kernel sends SIGCONT with the hangup, and Textual's SIGCONT handler redraws the whole screen, from
    # inside a signal handler, into a queue the main thread may be holding: it can deadlock the app.
    signal.signal(signal.SIGCONT, signal.SIG_DFL)
    # One hangup per terminal, however many SIGHUPs (tmux and the kernel both send one): a repeat is not the
    # "second signal" that forces an exit.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGHUP:
        _hung_up()
    raise StopSignal(signum)


def raise_on_stop_signals() -> None:
    """SIGTERM / SIGHUP raise StopSignal in the main thread (headless, loading, and the stop after the app)."""
    for sig in STOP_SIGNALS:
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # hung up already, or started under nohup: it stays ignored
        signal.signal(sig, _raise_stop)


_missed: list[int] = []  # signals that came after the app's loop closed, for run_app to act on


def on_stop_signals(loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]) -> None:
    """While an asyncio loop runs (the app), deliver SIGTERM / SIGHUP to `handler(signum)` on the loop instead of
    raising inside it. Until `raise_on_stop_signals()` re-arms them, a signal after the loop closed is kept for
    `missed_signals()` (raising in the middle of Textual's shutdown could leave its locks held)."""

    def deliver(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            _hung_up()
        try:
            loop.call_soon_threadsafe(handler, signum)
        except RuntimeError:  # the loop is closed
            _missed.append(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, deliver)


def missed_signals() -> list[int]:
    """The stop signals `on_stop_signals` could no longer deliver (and forget them)."""
    out = list(_missed)
    _missed.clear()
    return out
