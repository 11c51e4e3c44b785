"""Headless client: one line per trial event and a compact progress table every few seconds."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import NoReturn, TextIO

from tui_tuner.cli import EXIT_INTERRUPTED
from tui_tuner.engine.events import ROUTINE_EVENTS, Event
from tui_tuner.engine.snapshot import SweepSnapshot
from tui_tuner.engine.sweep import Sweep
from tui_tuner.format import fmt_bytes, fmt_float, fmt_params
from tui_tuner.signals import exit_code
from tui_tuner.state_words import count_words


def run_headless(sweep: Sweep, table_every: float = 5.0, out: TextIO | None = None) -> int:
    """Print events and tables until the budget is spent (exit 0) or a Ctrl-C / SIGTERM / SIGHUP stops the sweep
    gracefully (exit 128 + the signal); a second one during that stop exits at once."""
    # Looked up per call, not bound as the default at import: sys.stdout may since have been replaced (and the
    # old one closed), as pytest's capture does between tests.
    out = out or sys.stdout
    lock = threading.Lock()
    replayed = 0  # events up to this seq were printed from the log: the sweep emitted them before we listened
    code = 0

    def show(ev: Event) -> None:
        if ev.kind not in ROUTINE_EVENTS:
            say(f"[{_clock(ev.time)}] {ev.message}", out)

    def on_event(ev: Event) -> None:
        with lock:
            if ev.seq > replayed:
                show(ev)

    with lock:
        unsubscribe = sweep.subscribe(on_event)
        for ev in sweep.events_since(0):  # e.g. trials a resume restarted inside start()
            show(ev)
            replayed = ev.seq
    try:
        try:
            while not sweep.wait(table_every):
                table = progress_table(sweep.snapshot())  # not under `lock`: listeners take it on engine threads
                with lock:
                    say(table, out)
        except KeyboardInterrupt as e:  # Ctrl-C, or a StopSignal (SIGTERM, SIGHUP)
            code = exit_code(e)
            again = "Ctrl-C" if code == EXIT_INTERRUPTED else "the signal"
            say(f"stopping: running trials checkpoint and end at their next step ({again} again to force)", out)
        finally:
            sweep.stop()
            unsubscribe()
        say(progress_table(sweep.snapshot()) + "\n" + summary(sweep), out)
    except KeyboardInterrupt as e:  # the second one, while the first one's graceful stop is under way
        force_exit(sweep, exit_code(e))
    if sweep.halted:  # the sampler broke: the budget was not spent, and scripts must see it
        say(f"tui-tuner: error: sweep halted: {sweep.halted}", sys.stderr)
        return 1
    return code


def say(text: str, out: TextIO) -> None:
    """Print and flush; a reader that went away (`| head`, a tee killed by the same Ctrl-C, a hung-up terminal)
    must not turn a graceful stop into a traceback."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: the stream was closed
        print(text, file=out, flush=True)


def force_exit(sweep: Sweep, code: int = EXIT_INTERRUPTED) -> NoReturn:
    """Leave now. os._exit, not sys.exit: a normal exit would run the atexit stop() and wait for the trials
    again, and torch threads still running at interpreter teardown abort the process with a C++ message.
    Everything written so far is flushed; `resume` re-runs what was cut off from its last checkpoint."""
    say(f"tui-tuner: forced exit; continue with `tui-tuner resume {sweep.run_dir}`", sys.stderr)
    os._exit(code)


def progress_table(snap: SweepSnapshot) -> str:
    counts = "  ".join(f"{label} {n}" for label, n in count_words(snap.counts))
    head = (f"-- {snap.study_name}  {int(snap.elapsed)}s  {counts}  "
            f"best {fmt_float(snap.best_value)} (#{snap.best_trial if snap.best_trial is not None else '-'})")
    lines = [head, f"{'#':>4} {'state':<11} {'step':>11} {'loss':>7} {'eval':>7} {'best':>7} {'lr':>8} "
             f"{'tok/s':>7} {'mem':>7}  params"]
    for t in snap.trials:
        step = f"{t.step}/{t.total_steps or '?'}" if t.state != "waiting" else "-"
        lines.append(
            f"{t.number:>4} {t.state:<11} {step:>11} {fmt_float(t.loss):>7} {fmt_float(t.eval_loss):>7} "
            f"{fmt_float(t.best_eval_loss):>7} {fmt_float(t.lr, 2):>8} {fmt_float(t.tokens_per_s, 0):>7} "
            f"{fmt_bytes(t.peak_mem_bytes):>7}  {fmt_params(t.params)}"
            + (f"  fork of #{t.parent}@{t.fork_step}" if t.parent is not None else "")
        )
    return "\n".join(lines)


def summary(sweep: Sweep) -> str:
    best = sweep.best()
    if best is None:
        return "no trial completed"
    where = best.checkpoints[-1].path if best.checkpoints else "(no checkpoint)"
    return (f"best trial #{best.number}: eval loss {best.eval_loss:.4f}\n  params: {best.params}"
            + (f"\n  overrides: {best.overrides}" if best.overrides else "") + f"\n  adapter: {where}")


def _clock(t: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(t))
