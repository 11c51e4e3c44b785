"""Headless client: a line per change (a trial starting or ending, with its numbers; a new best), a one-line
summary every few seconds while trials move, and the table at the end, all as wide as the terminal."""

from __future__ import annotations

import queue
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from tui_tuner.engine.events import ROUTINE_EVENTS, Event
from tui_tuner.engine.sweep import Sweep
from tui_tuner.exit_codes import EXIT_HALTED, EXIT_INTERRUPTED
from tui_tuner.format import fmt_duration, fmt_loss, fmt_params, fmt_steps
from tui_tuner.preset import AlertsSection
from tui_tuner.report import (
    clock,
    force_exit,
    progress_table,
    say,
    summary,
    summary_line,
    terminal_width,
    where_next,
    wrap,
)
from tui_tuner.signals import exit_code
from tui_tuner.state_words import lineage_words
from tui_tuner.ui.alerts import Alert, AlertWatcher

if TYPE_CHECKING:
    from tui_tuner.engine.snapshot import SweepSnapshot, TrialSnapshot

# "starting" (the model is being built) is followed by "started" a moment later, which says it with the params.
QUIET_EVENTS = ROUTINE_EVENTS | {"starting"}
EVENT_INDENT = " " * 11  # under the message, past the [HH:MM:SS] clock


def details(ev: Event, t: TrialSnapshot | None) -> str:
    """The numbers an event line leaves out: a started trial's params; an ended one's steps, best eval, time."""
    if t is None:
        return ""
    if ev.kind == "started":
        fork = f" ({lineage_words(t.origin, t.parent, t.fork_step, t.user_attrs)})" if t.parent is not None else ""
        return f": {fmt_params(t.params)}{fork}" if t.params else fork
    if ev.kind in ("complete", "pruned", "killed"):
        took = f", {fmt_duration(t.finished_at - t.started_at)}" if t.finished_at and t.started_at else ""
        return f" [{fmt_steps(t.step, t.total_steps)} steps{took}, best {fmt_loss(t.best_eval_loss)}]"
    return ""


def _versions(snap: SweepSnapshot) -> tuple[tuple[int, int], ...]:
    return tuple((t.number, t.version) for t in snap.trials)


def _still(sweep: Sweep, paused: list[int], settle_s: float = 0.5) -> bool:
    """The same trials are still all that is left a moment later (not a pause on its way to a resume)."""
    time.sleep(settle_s)
    return sweep.only_paused_left == paused


def run_headless(sweep: Sweep, summary_every: float = 10.0, out: TextIO | None = None, clients: bool = False,
                 watched: Callable[[], bool] | None = None) -> int:
    """Print what changes (trials starting and ending with their numbers, new bests) and a one-line summary
    every `summary_every` seconds while trials move, until the budget is spent (exit 0), a client stops the
    sweep over the API, or a Ctrl-C / SIGTERM / SIGHUP stops it gracefully (exit 128 + the signal); a second one
    during that stop exits at once. With `clients` (the engine serves its control API) paused trials wait for a
    client to resume them (`ctl resume`, attach); without, nobody could, and it stops. `watched` (a client is
    attached): a finished sweep keeps going while it says so, so an attached app keeps its view (and can fork)."""
    # Looked up per call, not bound as the default at import: sys.stdout may since have been replaced (and the
    # old one closed), as pytest's capture does between tests.
    out = out or sys.stdout
    # Listeners run on engine threads, some under engine locks: they only queue, and this thread prints, with
    # the numbers of a snapshot it takes itself.
    pending: queue.SimpleQueue[Event] = queue.SimpleQueue()
    unsubscribe = sweep.subscribe(pending.put)
    earlier = sweep.events_since(0)  # e.g. trials a resume restarted inside start()
    replayed = earlier[-1].seq if earlier else 0  # printed from the log: the sweep emitted them before we listened
    best = AlertWatcher(AlertsSection(sweep_finished=False, trial_failed=False))  # events tell those already
    code = 0
    width = terminal_width()

    def report(snap: SweepSnapshot, events: list[Event]) -> None:
        trials = {t.number: t for t in snap.trials}
        news = best.observe(snap)
        for ev in events:
            if ev.kind not in QUIET_EVENTS:
                say(wrap(f"[{clock(ev.time)}] {ev.message}{details(ev, trials.get(ev.trial))}", width, EVENT_INDENT),
                    out)
            if ev.kind == "complete" and ev.trial == snap.best_trial:  # the new best right under its trial's end
                news = tell(news, ev.time)
        tell(news, time.time())

    def tell(alerts: list[Alert], when: float) -> list[Alert]:
        for alert in alerts:
            say(wrap(f"[{clock(when)}] {alert.message}", width, EVENT_INDENT), out)
        return []

    def drain() -> list[Event]:
        events = []
        while not pending.empty():
            if (ev := pending.get()).seq > replayed:
                events.append(ev)
        return events

    if news := [ev for ev in earlier if not ev.earlier]:  # an earlier process of a resumed run printed the rest
        report(sweep.snapshot(), news)
    try:
        try:
            next_summary = time.monotonic() + summary_every
            summarised: tuple[tuple[int, int], ...] = ()
            told_paused: list[int] = []
            lingering = False
            # Lingers after the budget is spent, never after a stop (ctl stop waits for this engine to exit).
            while not sweep.wait(min(1.0, summary_every)) or (watched is not None and not sweep.stopping
                                                               and watched()):
                if sweep.finished and not lingering:
                    lingering = True
                    say("sweep finished: the engine stays up while a client is attached (it exits once none has "
                        "been for 5 s)", out)
                lingering = lingering and sweep.finished
                snap = sweep.snapshot()
                report(snap, drain())
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
                if time.monotonic() >= next_summary:
                    next_summary += summary_every
                    if (versions := _versions(snap)) != summarised:  # nothing moved: nothing to say
                        summarised = versions
                        say(summary_line(snap, full_steps=sweep.preset.params.max_steps), out)
        except KeyboardInterrupt as e:  # Ctrl-C, or a StopSignal (SIGTERM, SIGHUP)
            code = exit_code(e)
            again = "Ctrl-C" if code == EXIT_INTERRUPTED else "the signal"
            say(f"stopping: running trials checkpoint and end at their next step ({again} again to force)", out)
        finally:
            sweep.stop()
            unsubscribe()
        snap = sweep.snapshot()
        report(snap, drain())
        say(progress_table(snap) + "\n" + summary(sweep) + "\n" + where_next(sweep), out)
    except KeyboardInterrupt as e:  # the second one, while the first one's graceful stop is under way
        force_exit(sweep, exit_code(e))
    if sweep.halted:  # the sampler broke: the budget was not spent, and scripts must see it
        say(f"tui-tuner: error: sweep halted: {sweep.halted}", sys.stderr)
        return EXIT_HALTED
    return code
