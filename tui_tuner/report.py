"""Plain-text reports of a sweep shared by the clients (headless output, the app's last words): the progress
table, the summary, and writing them to a terminal that may have gone away."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, Protocol, TextIO

from tui_tuner.eta import sweep_eta
from tui_tuner.exit_codes import EXIT_INTERRUPTED
from tui_tuner.format import fmt_bytes, fmt_duration, fmt_loss, fmt_lr, fmt_params, fmt_rate, fmt_steps
from tui_tuner.lineage import ancestry, segments
from tui_tuner.state_words import COUNT_WORDS, count_words, lineage_words, state_word
from tui_tuner.sweep_words import best_words

if TYPE_CHECKING:
    from pathlib import Path

    from tui_tuner.engine.snapshot import SweepSnapshot, TrialSnapshot


class Reported(Protocol):
    """What the reports read of a sweep: an in-process Sweep or a RemoteSweep."""

    run_dir: Path

    def best(self) -> TrialSnapshot | None: ...
    def snapshot(self) -> SweepSnapshot: ...
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


def terminal_width() -> int:
    """The width to write for: the terminal's, $COLUMNS, or 80 (a file, a pipe, a CI log)."""
    return shutil.get_terminal_size((80, 24)).columns


def wrap(text: str, width: int, indent: str = "") -> str:
    """Wrap at spaces, never inside a word or number (a long one overflows rather than breaks)."""
    return "\n".join(textwrap.wrap(text, max(width, 20), subsequent_indent=indent, break_long_words=False,
                                    break_on_hyphens=False)) or text


def fit(chunks: list[str], width: int, indent: str = "   ") -> str:
    """Chunks joined by two spaces, a line broken only between chunks (a chunk such as "best 1.070 (#0)" stays
    whole)."""
    lines = [""]
    for c in chunks:
        if lines[-1].strip() and len(lines[-1]) + 2 + len(c) > width:
            lines.append(indent)
        lines[-1] += ("  " if lines[-1].strip() else "") + c
    return "\n".join(lines)


def _step(t: TrialSnapshot) -> str:
    return fmt_steps(t.step, t.total_steps) if t.state != "waiting" else "-"


# (title, width, cell); the last ones are dropped first when the terminal is too narrow for them.
_COLUMNS: tuple[tuple[str, int, Callable[[TrialSnapshot], str]], ...] = (
    ("#", -4, lambda t: str(t.number)),
    ("state", 11, lambda t: state_word(t.state, t.user_attrs)),
    ("step", -11, _step),
    ("loss", -7, lambda t: fmt_loss(t.loss)),
    ("eval", -7, lambda t: fmt_loss(t.eval_loss)),
    ("best", -7, lambda t: fmt_loss(t.best_eval_loss)),
    ("lr", -8, lambda t: fmt_lr(t.lr)),
    ("tok/s", -7, lambda t: fmt_rate(t.tokens_per_s)),
    ("mem", -7, lambda t: fmt_bytes(t.peak_mem_bytes)),
)
_KEPT = 6  # #, state, step, loss, eval, best: never dropped
PARAMS_INDENT = " " * 6


def progress_table(snap: SweepSnapshot, width: int | None = None) -> str:
    """The trials as a table that fits `width` (default: the terminal's): columns the width cannot hold are
    dropped from the right, and a trial's params go on lines of their own when they do not fit beside it."""
    width = width or terminal_width()
    cols = list(_COLUMNS)
    while len(cols) > _KEPT and sum(abs(w) + 1 for _, w, _ in cols) - 1 > width:
        cols.pop()

    def row(cells: list[str]) -> str:
        return " ".join(f"{c:>{-w}}" if w < 0 else f"{c:<{w}}" for c, (_, w, _) in zip(cells, cols, strict=True))

    counts = [f"{label} {n}" for label, n in count_words(snap.counts)]
    titles = row([title for title, _, _ in cols])
    lines = [fit([f"-- {snap.study_name}", f"{int(snap.elapsed)}s", *counts, best_words(snap)], width),
             titles + ("  params" if len(titles) + 8 <= width else "")]  # else k=v on its own line says it
    for t in snap.trials:
        cells = row([cell(t) for _, _, cell in cols])
        lineage = lineage_words(t.origin, t.parent, t.fork_step, t.user_attrs)
        params = fmt_params(t.params) + (f"  {lineage}" if lineage else "")
        if not params:
            lines.append(cells)
        elif len(cells) + 2 + len(params) <= width:
            lines.append(f"{cells}  {params}")
        else:
            lines += [cells, wrap(PARAMS_INDENT + params, width, PARAMS_INDENT)]
    return "\n".join(lines)


def summary_line(snap: SweepSnapshot, width: int | None = None, full_steps: int | None = None) -> str:
    """One line of progress: elapsed, counts, the sweep's ETA, the best so far, and as many active trials (step,
    last eval) as fit `width`; the others are counted. Zero counts go first when even that is too wide."""
    width = width or terminal_width()
    running = [t for t in snap.trials if t.state in ("running", "starting", "paused")]
    counts = [(label, n) for label, n in count_words(snap.counts)]

    def head() -> str:
        return " ".join([f"-- {int(snap.elapsed)}s", *(f"{label} {n}" for label, n in counts),
                         f"eta {fmt_duration(sweep_eta(snap, full_steps))}", best_words(snap)])

    # Too wide: zero counts go first, then those shown only when non-zero (pruned, killed...; the table says them)
    always = {label for label, _, shown in COUNT_WORDS if shown}
    for droppable in (lambda c: c[1] == 0, lambda c: c[0] not in always):
        while len(head()) + len(f"  +{len(running)} active") > width and any(droppable(c) for c in counts):
            counts.remove(next(c for c in reversed(counts) if droppable(c)))
    line = head()
    for i, t in enumerate(running):
        item = f"  #{t.number} {_step(t)}" + (f" {fmt_loss(t.eval_loss)}" if t.eval_loss is not None else "")
        more = f"  +{len(running) - i - 1} active" if i < len(running) - 1 else ""
        if len(line) + len(item) + len(more) > width:
            return line + f"  +{len(running) - i} active"
        line += item
    return line


def summary(sweep: Reported) -> str:
    best = sweep.best()
    if best is None:
        return "no trial completed"
    where = best.checkpoints[-1].path if best.checkpoints else "(no checkpoint)"
    width = terminal_width()
    lines = [f"best trial #{best.number}: eval loss {fmt_loss(best.eval_loss)}",
             wrap(f"  params: {best.params}", width, "    ")]
    if best.overrides:
        lines.append(wrap(f"  overrides: {best.overrides}", width, "    "))
    if best.parent is not None:  # its weights came through forks or PBT clones: the steps each trial trained
        chain = ancestry(sweep.snapshot().trials, best.number)
        lines.append(wrap(f"  lineage: {segments(chain, tuple(best.params) or ('learning_rate',))}", width, "    "))
    return "\n".join([*lines, wrap(f"  adapter: {where}", width, "    ")])


def where_next(sweep: Reported) -> str:
    """The run dir, and the command that continues it when there is work left (a stop, a signal, a halt)."""
    hint = f"  (continue with: tui-tuner resume {sweep.run_dir})" if sweep.resumable else ""
    return f"run directory: {sweep.run_dir}{hint}"  # one line, whatever the width: the command is pasted whole


def clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))
