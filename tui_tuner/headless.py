"""Headless client: one line per trial event and a compact progress table every few seconds."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from tui_tuner.engine.events import ROUTINE_EVENTS, Event
from tui_tuner.engine.sweep import Sweep
from tui_tuner.exit_codes import EXIT_HALTED, EXIT_INTERRUPTED
from tui_tuner.report import clock, force_exit, progress_table, say, summary, where_next
from tui_tuner.signals import exit_code


def _still(sweep: Sweep, paused: list[int], settle_s: float = 0.5) -> bool:
    """The same trials are still all that is left a moment later (not a pause on its way to a resume)."""
    time.sleep(settle_s)
    return sweep.only_paused_left == paused


def run_headless(sweep: Sweep, table_every: float = 5.0, out: TextIO | None = None, clients: bool = False) -> int:
    """Print events and tables until the budget is spent (exit 0), a client stops the sweep over the API, or a
    Ctrl-C / SIGTERM / SIGHUP stops it gracefully (exit 128 + the signal); a second one during that stop exits
    at once. With `clients` (the engine serves its control API) paused trials wait for a client to resume
    them (`ctl resume`, attach); without, nobody could, and it stops."""
    # Looked up per call, not bound as the default at import: sys.stdout may since have been replaced (and the
    # old one closed), as pytest's capture does between tests.
    out = out or sys.stdout
    lock = threading.Lock()
    replayed = 0  # events up to this seq were printed from the log: the sweep emitted them before we listened
    code = 0

    def show(ev: Event) -> None:
        if ev.kind not in ROUTINE_EVENTS:
            say(f"[{clock(ev.time)}] {ev.message}", out)

    def on_event(ev: Event) -> None:
        with lock:
            if ev.seq > replayed:
                show(ev)

    with lock:
        unsubscribe = sweep.subscribe(on_event)
        for ev in sweep.events_since(0):  # e.g. trials a resume restarted inside start()
            if not ev.earlier:  # an earlier process of a resumed run printed those already
                show(ev)
            replayed = ev.seq
    try:
        try:
            next_table = time.monotonic() + table_every
            told_paused: list[int] = []
            while not sweep.wait(min(1.0, table_every)):
                if clients:
                    if (paused := sweep.only_paused_left) and paused != told_paused and _still(sweep, paused):
                        told_paused = paused
                        say(f"only paused trials are left ({', '.join(f'#{n}' for n in paused)}): waiting for a "
                            f"client; `tui-tuner ctl {sweep.run_dir} resume {paused[0]}` or `tui-tuner attach "
                            f"{sweep.run_dir}`", out)
                elif (paused := sweep.only_paused_left) and _still(sweep, paused):
                    # Nobody can press resume here: stop (they stay paused) rather than wait forever.
                    names = ", ".join(f"#{n}" for n in paused)
                    say(f"tui-tuner: only paused trials are left ({names}) and headless mode cannot resume them: "
                        f"stopping. Continue with `tui-tuner resume {sweep.run_dir}` (the app) or "
                        f"`tui-tuner resume {sweep.run_dir} --headless --resume-paused`", sys.stderr)
                    code = EXIT_HALTED
                    break
                if time.monotonic() >= next_table:
                    next_table += table_every
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
        say(progress_table(sweep.snapshot()) + "\n" + summary(sweep) + "\n" + where_next(sweep), out)
    except KeyboardInterrupt as e:  # the second one, while the first one's graceful stop is under way
        force_exit(sweep, exit_code(e))
    if sweep.halted:  # the sampler broke: the budget was not spent, and scripts must see it
        say(f"tui-tuner: error: sweep halted: {sweep.halted}", sys.stderr)
        return EXIT_HALTED
    return code
