"""Plain-text reports of a sweep shared by the clients (headless output, the app's last words): the progress
table, the summary, and writing them to a terminal that may have gone away."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import TYPE_CHECKING, NoReturn, Protocol, TextIO

from tui_tuner.exit_codes import EXIT_INTERRUPTED
from tui_tuner.format import fmt_bytes, fmt_float, fmt_params
from tui_tuner.state_words import count_words

if TYPE_CHECKING:
    from pathlib import Path

    from tui_tuner.engine.snapshot import SweepSnapshot, TrialSnapshot


class Reported(Protocol):
    """What the reports read of a sweep: an in-process Sweep or a RemoteSweep."""

    run_dir: Path

    def best(self) -> TrialSnapshot | None: ...
    @property
    def resumable(self) -> bool: ...


def say(text: str, out: TextIO) -> None:
    """Print and flush; a reader that went away (`| head`, a tee killed by the same Ctrl-C, a hung-up terminal)
    must not turn a graceful stop into a traceback."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: the stream was closed
        print(text, file=out, flush=True)


def force_exit(sweep: Reported, code: int = EXIT_INTERRUPTED) -> NoReturn:
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


def summary(sweep: Reported) -> str:
    best = sweep.best()
    if best is None:
        return "no trial completed"
    where = best.checkpoints[-1].path if best.checkpoints else "(no checkpoint)"
    return (f"best trial #{best.number}: eval loss {best.eval_loss:.4f}\n  params: {best.params}"
            + (f"\n  overrides: {best.overrides}" if best.overrides else "") + f"\n  adapter: {where}")


def where_next(sweep: Reported) -> str:
    """The run dir, and the command that continues it when there is work left (a stop, a signal, a halt)."""
    hint = f"  (continue with: tui-tuner resume {sweep.run_dir})" if sweep.resumable else ""
    return f"run directory: {sweep.run_dir}{hint}"


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))
