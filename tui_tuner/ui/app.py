"""The tui-tuner app: status line, trials table, Loss/LR/System/Events/Insight panels, keys that drive the Sweep."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from textual import on
from textual.app import App, ComposeResult, ScreenStackError, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.css.query import NoMatches
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Tab, Tabs

from tui_tuner.engine.events import ROUTINE_EVENTS, Event
from tui_tuner.engine.lifecycle import FINISHED
from tui_tuner.engine.snapshot import Insight, SweepSnapshot, TrialSnapshot
from tui_tuner.engine.sweep import Sweep, SweepError
from tui_tuner.signals import exit_code, missed_signals, on_stop_signals, raise_on_stop_signals
from tui_tuner.ui.alerts import KINDS, LABELS, Alert, AlertWatcher
from tui_tuner.ui.charts import LossChart, LrChart
from tui_tuner.ui.compare_screen import CompareScreen
from tui_tuner.ui.detail import TrialDetailScreen
from tui_tuner.ui.dialogs import ConfirmScreen, ParamsDialog, QuitScreen, param_rows
from tui_tuner.ui.event_log import EventLogPanel
from tui_tuner.ui.help import HelpScreen
from tui_tuner.ui.insight_panel import InsightPanel
from tui_tuner.ui.lineage_screen import LineageScreen
from tui_tuner.ui.messages import CommandDone, EngineEvent, InsightReady, SweepLoaded
from tui_tuner.ui.source import SweepSource, SystemSource
from tui_tuner.ui.status_line import StatusLine
from tui_tuner.ui.system_panel import SystemPanel
from tui_tuner.ui.trials_table import TrialsTable

if TYPE_CHECKING:
    from tui_tuner.api.client import RemoteSweep

PANELS = ("loss", "lr", "system", "events", "insight")
DEBOUNCE_S = 0.3
WIDE = (140, 40)  # from this size on, all panels show at once instead of as tabs
CHART_EVERY_S = 2.0  # new data redraws a chart at most this often (selection, log-y, resize redraw at once)
# ...and no more often than keeps its redraws under this share of one core: the UI's CPU time is taken from the
# training threads (GIL, and on a CPU box the cores), so a costly chart (big terminal, many trials) slows down.
CHART_CPU_SHARE = 0.015


PANEL_TITLES = {"loss": "Loss", "lr": "LR", "system": "System", "events": "Events", "insight": "Insight"}


class TuiTunerApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "tui-tuner"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "pause_resume", "Pause/resume", id="pause"),
        Binding("k", "kill", "Kill", id="kill"),
        Binding("f", "fork", "Fork", id="fork"),
        Binding("n", "new_trial", "New", id="new"),
        # The footer shows keys in this order and cuts the rest at the right edge: Help and Quit come before
        # the keys an 80-column terminal can do without seeing (all are in ? and the palette).
        Binding("question_mark", "help", "Help", id="help"),
        Binding("q", "quit", "Quit", id="quit"),
        Binding("s", "sort", "Sort", id="sort"),
        Binding("+", "concurrency(1)", "Conc+", id="concurrency.up"),
        Binding("-", "concurrency(-1)", "Conc-", id="concurrency.down"),
        Binding("l", "log_y", "Log y", id="log_y"),
        Binding("enter", "detail", "Detail", id="detail", show=False),
        Binding("t", "lineage", "Lineage", id="lineage", show=False),
        Binding("h", "filter", "Hide ended", id="filter", show=False),
        Binding("c", "compare", "Compare", id="compare", show=False),
        Binding("left_square_bracket", "insight_param(-1)", "Prev param", id="insight.prev", show=False),
        Binding("right_square_bracket", "insight_param(1)", "Next param", id="insight.next", show=False),
        *(Binding(str(i + 1), f"panel_key('{p}')", f"{p} panel", id=f"panel.{p}", show=False)
          for i, p in enumerate(PANELS)),
    ]

    def __init__(self, source: SweepSource, system: SystemSource | None = None, refresh_s: float = 0.5,
                 live: bool = True, load: Callable[[], object] | None = None, signals: bool = False) -> None:
        super().__init__()
        self.source = source
        self.system = system
        self.refresh_s = refresh_s
        self.live = live  # False: no timer (snapshot tests and benchmarks drive refresh_view themselves)
        # `load` (the sweep's start()) runs on a thread once the first screen is painted, so the terminal shows
        # the study and what is loading instead of staying blank for the seconds a model takes.
        self._load = load
        self.loaded = threading.Event()
        if load is None:
            self.loaded.set()
        self.load_error: BaseException | None = None
        self._signals = signals  # handle SIGTERM / SIGHUP (the real app; not tests running in pytest's process)
        self.stop_signal: int | None = None  # the signal that asked for the stop, if one did
        self.log_y = False
        self.panel = "loss"
        self.zoomed = False  # wide layout: the active panel alone in the panels' area (1-4)
        self._titled: int | None = -1  # the trial the panel titles name
        self.snap: SweepSnapshot | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._accepting = False
        self._last_key: dict[str, float] = {}
        self._chart_sigs: dict[str, tuple[object, object]] = {}
        self._chart_drawn: dict[str, float] = {}
        self._stopping = False
        self.outcome: str | None = None  # "detached" once this client left a background engine running
        self.alerts: AlertWatcher  # made on mount, from the source's preset
        self.compare_mark: int | None = None  # the trial `c` marked; `c` on another compares the two
        self._insight_key: int | None = None  # finished trials when the insight was last asked for
        self._insight_busy = False  # a fetch is on its thread

    # -- layout --------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusLine(preset=self.source.preset.name, full_steps=self.source.preset.params.max_steps, id="status")
        yield TrialsTable(id="trials")
        # Each tab shows its key: 1-5 switch panels (the tabs are the only place a user learns that)
        yield Tabs(*(Tab(f"{i} {PANEL_TITLES[p]}", id=f"tab-{p}") for i, p in enumerate(PANELS, 1)), id="panel-tabs")
        with Container(id="panels"):
            yield LossChart(id="panel-loss", classes="panel -active")
            yield LrChart(id="panel-lr", classes="panel")
            yield SystemPanel(id="panel-system", classes="panel")
            yield EventLogPanel(id="panel-events", classes="panel")
            yield InsightPanel(id="panel-insight", classes="panel")
        yield Footer()

    def on_mount(self) -> None:
        self.alerts = AlertWatcher(self.source.preset.alerts)
        for name in PANELS:
            self.query_one(f"#panel-{name}").border_title = PANEL_TITLES[name]
        self._title_loss()
        self._accepting = True
        if self._signals:
            on_stop_signals(asyncio.get_running_loop(), self.stop_by_signal)
        self._unsubscribe = self.source.subscribe(self._engine_callback)
        self.snap = self.source.snapshot()
        # Subscribed first, then the backfill: an event in both is shown once (the panel drops repeats).
        self.query_one(EventLogPanel).reload(self.source.events_since(0), self.snap.started_at)
        self._apply_size(self.size.width, self.size.height)
        self.query_one(TrialsTable).focus()
        self.refresh_view()
        if self.live:
            self.set_interval(self.refresh_s, self.refresh_view)
        if self._load is not None:
            self.call_after_refresh(self._start_loading)

    def on_resize(self, event: Resize) -> None:
        self._apply_size(event.size.width, event.size.height)

    def _apply_size(self, width: int, height: int) -> None:
        self.screen.set_class(width >= WIDE[0] and height >= WIDE[1], "-wide")

    @property
    def wide(self) -> bool:
        return self.screen.has_class("-wide")

    def panel_visible(self, name: str) -> bool:
        return (self.wide and not self.zoomed) or self.panel == name

    # -- engine link ---------------------------------------------------------------------------
    def _engine_callback(self, ev: Event) -> None:
        """Runs on an engine thread: only post a message, and not once the app is going away."""
        if not self._accepting:
            return
        try:
            self.post_message(EngineEvent(ev))
        except RuntimeError:  # the loop closed under us
            self._accepting = False

    def detach(self) -> None:
        """Stop receiving engine events (called before exit; idempotent)."""
        self._accepting = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def on_unmount(self) -> None:
        self.detach()

    # -- loading -------------------------------------------------------------------------------
    def _start_loading(self) -> None:
        load = self._load
        assert load is not None

        def job() -> None:
            try:
                load()
            except BaseException as e:  # re-raised by run_app once the app is gone: the CLI prints its one line
                self.load_error = e
            self.loaded.set()
            if self._accepting:
                with contextlib.suppress(RuntimeError):
                    self.post_message(SweepLoaded())

        # A plain thread, not a Textual worker: asyncio.run joins worker threads at exit, and quitting must
        # not wait for a model to finish loading.
        threading.Thread(target=job, name="tui-tuner-load", daemon=True).start()

    @on(SweepLoaded)
    def _sweep_loaded(self) -> None:
        if self.load_error is not None:
            self.exit(1)
            return
        with contextlib.suppress(NoMatches, ScreenStackError):
            self.snap = self.source.snapshot()
            # start() read a resumed run's earlier events and numbered them before this process's: start over.
            self.query_one(EventLogPanel).reload(self.source.events_since(0), self.snap.started_at)
            self.refresh_view()

    @on(EngineEvent)
    def _engine_event(self, message: EngineEvent) -> None:
        if message.event.kind == "engine_gone":  # a remote engine ended (ctl stop, another client, a crash)
            self.outcome = "gone"
            self.exit(self.exit_code)
            return
        if message.event.kind == "changed":  # a remote client's cue: another client's command, redraw now
            with contextlib.suppress(NoMatches, ScreenStackError):
                self.refresh_view()
            return
        with contextlib.suppress(NoMatches, ScreenStackError):  # a message that lands while the app closes
            self.query_one(EventLogPanel).add(message.event)
            if message.event.kind not in ROUTINE_EVENTS:
                self.refresh_view()
            self._alert(self.alerts.on_event(message.event))  # after the refresh: a last new best comes first

    # -- refresh -------------------------------------------------------------------------------
    def refresh_view(self) -> None:
        """Pull the newest snapshot and redraw what changed; skipped while another screen is on top."""
        if not self.is_running or not self.screen_stack:
            return
        snap = self.source.snapshot()
        self._alert(self.alerts.observe(snap))  # also under a dialog: an alert must not wait for it to close
        if self.screen is not self.screen_stack[0]:
            return
        self.snap = snap
        with self.batch_update(), contextlib.suppress(NoMatches):
            self.query_one(StatusLine).show(snap)
            table = self.query_one(TrialsTable)
            table.show(snap)
            self._draw_panels(snap, table.selected)

    def _alert(self, alerts: list[Alert]) -> None:
        for a in alerts:
            self.notify(a.message, title="alert", severity=a.severity, timeout=15)
        if alerts and self.alerts.bell:
            self.bell()  # once for them all; inside tmux it also flags the window

    def action_toggle_alert(self, what: str) -> None:
        on = self.alerts.toggle(what)
        self.notify(f"alerts: {LABELS[what]} {'on' if on else 'off'}", timeout=3)

    def _draw_panels(self, snap: SweepSnapshot, selected: int | None) -> None:
        self._title_charts(selected)
        versions = tuple((t.number, t.version) for t in snap.trials)
        sel_version = next((t.version for t in snap.trials if t.number == selected), None)
        if self.panel_visible("loss"):
            chart = self.query_one(LossChart)
            if self._chart_due("loss", (selected, self.log_y, chart.size), versions, chart.draw_cost_s):
                chart.timed_draw(self.source, snap, selected, self.log_y)
        if self.panel_visible("lr"):
            lr = self.query_one(LrChart)
            if self._chart_due("lr", (selected, lr.size), sel_version, lr.draw_cost_s):
                lr.timed_draw(self.source, snap, selected)
        if self.panel_visible("system"):
            self.query_one(SystemPanel).show(self.system.latest() if self.system else None, snap)
        if self.panel_visible("insight"):
            self._fetch_insight(snap)

    def _fetch_insight(self, snap: SweepSnapshot) -> None:
        """Ask for the insight on a thread when a trial has finished since the last ask: the engine evaluates
        importances then (under the study's lock; over the network for a remote engine), never on the UI loop."""
        key = sum(t.state in FINISHED for t in snap.trials)
        if self._insight_busy or key == self._insight_key:
            return
        self._insight_key, self._insight_busy = key, True
        source = self.source

        def job() -> None:
            try:
                insight = source.insight()
            except Exception as e:  # a reason in the panel, never a traceback; the next refresh asks again
                insight = Insight(finished=0, complete=0, reason=f"no insight: {type(e).__name__}: {e}")
                self._insight_key = None
            if self._accepting:
                with contextlib.suppress(RuntimeError):
                    self.post_message(InsightReady(insight))

        threading.Thread(target=job, name="tui-tuner-insight", daemon=True).start()

    @on(InsightReady)
    def _insight_ready(self, message: InsightReady) -> None:
        self._insight_busy = False
        with contextlib.suppress(NoMatches, ScreenStackError):
            self.query_one(InsightPanel).show(message.insight)

    def _chart_due(self, name: str, view: object, data: object, cost_s: float) -> bool:
        """Redraw at once when the view changed (selection, log-y, size); on new data at most every
        CHART_EVERY_S, or less often when a redraw costs more than CHART_CPU_SHARE of a core."""
        old = self._chart_sigs.get(name)
        now = time.monotonic()
        every = max(CHART_EVERY_S, cost_s / CHART_CPU_SHARE)
        if old is not None and old[0] == view and (old[1] == data or now - self._chart_drawn[name] < every):
            return False
        self._chart_sigs[name] = (view, data)
        self._chart_drawn[name] = now
        return True

    @on(DataTable.RowHighlighted)
    def _row_changed(self) -> None:
        # A highlight queued just before the app closes can arrive after its widgets are gone.
        if self.snap is not None:
            with contextlib.suppress(NoMatches, ScreenStackError):
                self._draw_panels(self.snap, self.query_one(TrialsTable).selected)

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_detail()

    @on(Tabs.TabActivated)
    def _tab_changed(self, event: Tabs.TabActivated) -> None:
        if event.tab.id:
            with contextlib.suppress(NoMatches):  # a tab change that lands while the app closes
                self.action_panel(event.tab.id.removeprefix("tab-"))

    # -- helpers -------------------------------------------------------------------------------
    def _debounced(self, what: str) -> bool:
        """True if this key repeated within DEBOUNCE_S (a held key must not kill twice)."""
        now = time.monotonic()
        last = self._last_key.get(what, -1e9)
        self._last_key[what] = now
        return now - last < DEBOUNCE_S

    def selected_trial(self, fresh: bool = False) -> TrialSnapshot | None:
        """The selected row's trial; `fresh` reads the engine now rather than the last tick's snapshot."""
        n = self.query_one(TrialsTable).selected
        if fresh or self.snap is None:
            self.snap = self.source.snapshot()
        snap = self.snap
        trial = next((t for t in snap.trials if t.number == n), None)
        if trial is None:
            self.notify("no trial selected", severity="warning")
        return trial

    def _command(self, fn: Callable[[], object], done: str) -> None:
        try:
            fn()
        except SweepError as e:
            self.notify(str(e), severity="error")
            return
        self.notify(done)
        self.refresh_view()

    def _background(self, what: str, fn: Callable[[], object]) -> None:
        """Run a command that may wait on a trial thread (fork checkpoints first) without blocking the UI."""

        def job() -> None:
            try:
                result, error = fn(), None
            except SweepError as e:
                result, error = None, str(e)
            except Exception as e:  # never let a command take the UI down
                result, error = None, f"{type(e).__name__}: {e}"
            if self._accepting:
                with contextlib.suppress(RuntimeError):
                    self.post_message(CommandDone(what, result, error))

        threading.Thread(target=job, name=f"tui-tuner-{what}", daemon=True).start()

    @on(CommandDone)
    def _command_done(self, message: CommandDone) -> None:
        if message.what == "stop":
            self.exit(self.exit_code)
            return
        if message.error:
            self.notify(message.error, severity="error")
        else:
            self.notify(f"{message.what}: trial #{message.result}")
        with contextlib.suppress(ScreenStackError):
            self.refresh_view()

    # -- actions -------------------------------------------------------------------------------
    def _refuse_inactive(self, t: TrialSnapshot, what: str) -> bool:
        """Say at once why a trial cannot be paused or killed (no confirm first); a queued one can be killed,
        which cancels it."""
        if t.active or (what == "kill" and t.state == "waiting"):
            return False
        self.notify(f"cannot {what} trial #{t.number}: it is {t.state}", severity="warning")
        return True

    def action_pause_resume(self) -> None:
        t = None if self._debounced("pause") else self.selected_trial(fresh=True)
        if t is None or self._refuse_inactive(t, "pause"):
            return
        if t.pause_requested:  # a toggle of what was asked, even before the trial reached its step boundary
            self._command(lambda: self.source.resume_trial(t.number), f"trial #{t.number} resumed")
        else:
            self._command(lambda: self.source.pause(t.number), f"trial #{t.number} paused")

    def action_kill(self) -> None:
        if self._debounced("kill") or (t := self.selected_trial()) is None or self._refuse_inactive(t, "kill"):
            return
        queued = t.state == "waiting"  # killing a queued trial cancels it: it never runs

        def answer(yes: bool | None) -> None:
            if yes:
                self._command(lambda: self.source.kill(t.number),
                              f"trial #{t.number}: {'cancelled' if queued else 'kill requested'}")

        if queued:
            question = f"Cancel queued trial #{t.number}?\nIt never runs; Optuna records it FAIL (cancelled by user)."
        else:
            question = (f"Kill trial #{t.number} ({t.state}, step {t.step})?\n"
                        "Optuna records it PRUNED (stopped by user).")
        self.push_screen(ConfirmScreen(question), answer)

    def _values(self, t: TrialSnapshot | None) -> dict[str, Any]:
        values = self.source.preset.params.model_dump()
        if t is not None:
            values.update(t.params)
            values.update(t.overrides)
        return values

    def action_fork(self) -> None:
        if self._debounced("fork") or (t := self.selected_trial()) is None:
            return
        if t.state == "waiting":
            self.notify(f"trial #{t.number} has not started yet", severity="error")
            return
        if not t.active and not t.checkpoints:  # said now, not after the params are edited
            self.notify(f"cannot fork trial #{t.number}: it is {t.state} and has no checkpoint", severity="error")
            return
        n, source, preset = t.number, self.source, self.source.preset
        self.push_screen(ParamsDialog(
            f"Fork trial #{n} (at step {t.step}): a new trial from its checkpoint",
            self._values(t), param_rows(preset.search, preset.model.method, fork=True), frozenset(),
            submit=lambda params, step: source.fork(n, step=step, params=params),
            check=lambda params, step: source.check_fork(n, step=step, params=params, points=120),
            trial=t, confirm_label="Fork"), lambda child: self._created("fork", child))

    def action_new_trial(self) -> None:
        if self._debounced("new"):
            return
        n = self.query_one(TrialsTable).selected
        t = next((x for x in self.snap.trials if x.number == n), None) if self.snap else None
        source, preset = self.source, self.source.preset
        self.push_screen(ParamsDialog(
            "New trial: runs next with these params" + (f" (pre-filled from #{t.number})" if t else ""),
            self._values(t if t is not None and t.params else None),
            param_rows(preset.search, preset.model.method, fork=False), frozenset(preset.search),
            submit=lambda params, _step: source.enqueue(params), confirm_label="Enqueue"),
            lambda number: self._created("enqueue", number))

    def _created(self, what: str, number: int | None) -> None:
        """A dialog's trial was made (its refusals stay in the dialog, and in Events)."""
        if number is not None:
            self.notify(f"{what}: trial #{number}")
            self.refresh_view()

    def action_concurrency(self, delta: int) -> None:
        if self._debounced(f"concurrency{delta}"):
            return
        k = self.source.concurrency + delta
        self._command(lambda: self.source.set_concurrency(k), f"concurrency {k}")

    def action_filter(self) -> None:
        table = self.query_one(TrialsTable)
        hidden = table.toggle_filter()
        self.notify(f"hiding {table.hidden} trials that ended early (h: show all)" if hidden
                    else "showing every trial", timeout=2)
        if self.snap is not None:
            self._draw_panels(self.snap, table.selected)

    def action_sort(self) -> None:
        label = self.query_one(TrialsTable).cycle_sort()
        self.notify(f"sorted by {label}", timeout=1.5)

    def action_log_y(self) -> None:
        self.log_y = not self.log_y
        self._title_loss()
        self.refresh_view()

    def _title_loss(self) -> None:
        """The loss panel's title names the selected trial, the scale it shows and what `l` turns it to."""
        n = self.query_one(TrialsTable).selected
        of = f" #{n}" if n is not None else ""
        self.query_one("#panel-loss").border_title = (f"Loss{of}, log y (l: linear)" if self.log_y
                                                      else f"Loss{of} (l: log y)")

    def _title_charts(self, selected: int | None) -> None:
        """The chart panels' titles (wide) and tabs (narrow) name the trial the charts single out."""
        if selected == self._titled:
            return
        self._titled = selected
        of = f" #{selected}" if selected is not None else ""
        self._title_loss()
        self.query_one("#panel-lr").border_title = f"LR{of}"
        for i, p in enumerate(PANELS, 1):
            label = f"{i} {PANEL_TITLES[p]}" + (of if p in ("loss", "lr") else "")
            self.query_one(f"#tab-{p}", Tab).label = label

    def action_panel_key(self, name: str) -> None:
        """1-4 (and the palette): show that panel; in the wide layout, where all are shown, zoom it (the same key
        again: back to all)."""
        if self.wide and name in PANELS:
            self.zoomed = not (self.zoomed and self.panel == name)
            self.screen.set_class(self.zoomed, "-zoomed")
            self.notify(f"{PANEL_TITLES[name]} panel zoomed ({PANELS.index(name) + 1} again: all panels)"
                        if self.zoomed else "all panels", timeout=2)
        self.action_panel(name)

    def action_panel(self, name: str) -> None:
        if name not in PANELS:
            return
        self.panel = name
        for p in PANELS:
            self.query_one(f"#panel-{p}").set_class(p == name, "-active")
        tabs = self.query_one(Tabs)
        if tabs.active != f"tab-{name}":
            tabs.active = f"tab-{name}"
        if self.snap is not None:
            self._draw_panels(self.snap, self.query_one(TrialsTable).selected)

    def action_detail(self) -> None:
        if (t := self.selected_trial()) is not None:
            self.push_screen(TrialDetailScreen(self.source, t.number))

    def action_lineage(self) -> None:
        def chosen(number: int | None) -> None:
            if number is not None:
                self.query_one(TrialsTable).select(number)
                self.refresh_view()

        self.push_screen(LineageScreen(self.source), chosen)

    def action_insight_param(self, delta: int) -> None:
        """Another param in the Insight panel's scatter (the panel shows first if it is not on screen)."""
        if not self.panel_visible("insight"):
            self.action_panel("insight")
        self.query_one(InsightPanel).move(delta)

    def action_compare(self) -> None:
        """Mark the selected trial; on another trial, compare the two (on the marked one, clear the mark)."""
        if (t := self.selected_trial()) is None:
            return
        if self.compare_mark is None:
            self.compare_mark = t.number
            self.notify(f"#{t.number} marked: c on another trial compares the two", timeout=5)
        elif self.compare_mark == t.number:
            self.compare_mark = None
            self.notify(f"#{t.number} unmarked", timeout=3)
        else:
            marked, self.compare_mark = self.compare_mark, None
            self.push_screen(CompareScreen(self.source, marked, t.number))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        if self._stopping or self._debounced("quit"):
            return

        if self.remote:  # the engine is a process of its own: it can go on without this client
            def choose(choice: str | None) -> None:
                if choice == "detach":
                    self.leave()
                elif choice == "stop":
                    self.begin_stop()

            self.push_screen(QuitScreen(self.source.run_dir), choose)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.begin_stop()

        self.push_screen(ConfirmScreen("Quit? Running trials checkpoint and stop (resume later with "
                                       f"`tui-tuner resume {self.source.run_dir}`)."), answer)

    @property
    def remote(self) -> bool:
        return bool(getattr(self.source, "remote", False))

    def leave(self) -> None:
        """Detach: this client exits, the engine and its trials go on."""
        self.outcome = "detached"
        self.exit(0)

    def begin_stop(self) -> None:
        """The graceful stop (q, SIGTERM, SIGHUP): trials checkpoint and end on a thread, then the app exits."""
        if self._stopping:
            return
        self._stopping = True
        if not self.loaded.is_set():  # nothing runs yet: leave now; run_app stops the sweep once start() returns
            self.exit(self.exit_code)
            return
        self.notify("stopping: running trials checkpoint and end at their next step…", timeout=30)
        self._background("stop", self.source.stop)

    def stop_by_signal(self, signum: int) -> None:
        """SIGTERM / SIGHUP, delivered on the UI loop: the first stops gracefully, a second one exits at once."""
        if self.remote:  # a hangup (the terminal is gone) or a SIGTERM ends this client, never the sweep
            if signum == signal.SIGTERM:
                self.stop_signal = signum  # exit 143, as a process SIGTERM ended
            if self.is_running:
                self.leave()
            return
        if self.stop_signal is None:
            self.stop_signal = signum
            if self.is_running:  # else run_app is already stopping the sweep
                self.begin_stop()
            return
        from tui_tuner.report import force_exit

        with contextlib.suppress(Exception):  # give the shell its screen back before the one-line hint
            self._driver.stop_application_mode()  # type: ignore[union-attr]
        force_exit(self.source, exit_code(signum))  # type: ignore[arg-type]

    @property
    def exit_code(self) -> int:
        return exit_code(self.stop_signal) if self.stop_signal is not None else 0

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        # Textual's own "Keys" (the focused widget's bindings) beside ours made two entries of one name.
        yield from (c for c in super().get_system_commands(screen) if c.title != "Keys")
        for i, p in enumerate(PANELS):
            name = "LR" if p == "lr" else p.capitalize()
            yield SystemCommand(f"Panel: {name} ({i + 1})", f"Show the {name} panel",
                                lambda p=p: self.action_panel_key(p))  # type: ignore[misc]
        for title, help_text, action in (
            ("Pause / resume trial", "Pause the selected trial, or resume it if paused", self.action_pause_resume),
            ("Kill trial", "Kill the selected trial (asks first)", self.action_kill),
            ("Fork trial", "Fork the selected trial from a checkpoint with edited params", self.action_fork),
            ("New trial", "Enqueue a trial with chosen params", self.action_new_trial),
            ("Concurrency +1", "Run one more trial at a time", lambda: self.action_concurrency(1)),
            ("Concurrency -1", "Run one fewer trial at a time", lambda: self.action_concurrency(-1)),
            ("Sort trials", "Cycle the table's sort column", self.action_sort),
            ("Hide ended trials", "Hide or show pruned, failed, killed, cancelled and interrupted trials (h)",
             self.action_filter),
            ("Toggle log-y", "Log scale for the loss chart", self.action_log_y),
            ("Trial detail", "All params, user attrs and checkpoints of the selected trial", self.action_detail),
            ("Lineage tree", "Forks and PBT clones under the trial they started from (t)", self.action_lineage),
            ("Compare trials", "Mark the selected trial, or compare it with the marked one side by side (c)",
             self.action_compare),
            ("Insight: next param", "The Insight panel's scatter shows the next searched param (])",
             lambda: self.action_insight_param(1)),
            ("Keys", "Every key of tui-tuner and what it does (?)", self.action_help),
            ("Quit sweep", "Checkpoint and stop running trials, then exit", self.action_quit),
        ):
            yield SystemCommand(title, help_text, action)
        for what in (*KINDS, "bell"):
            on = self.alerts.bell if what == "bell" else self.alerts.enabled[what]
            thing = "the bell that rings with each alert" if what == "bell" else f"the {LABELS[what]} alert"
            yield SystemCommand(f"Alerts: {LABELS[what]} ({'on' if on else 'off'})",
                                f"Turn {'off' if on else 'on'} {thing} (until the app exits)",
                                lambda w=what: self.action_toggle_alert(w))


def run_app(sweep: Sweep, start: bool = False) -> int:
    """Run the TUI on a sweep (`start`: the app calls sweep.start() itself, behind its first screen); on exit
    nothing is left RUNNING and no thread calls into the app. Returns the exit code: 0, or 128 + the signal
    that stopped it; a failed start() is raised, as the CLI reports it."""
    from tui_tuner.engine.system import SystemSampler
    from tui_tuner.report import force_exit, progress_table, say, summary, where_next

    sampler = SystemSampler().start()
    app = TuiTunerApp(sweep, system=sampler, load=sweep.start if start else None, signals=True)
    try:
        code = app.run()
    finally:
        raise_on_stop_signals()  # the loop is gone: a signal during the stop below interrupts it (force exit)
        app.detach()
        sampler.stop()
        for signum in missed_signals():  # came while the app was closing
            app.stop_by_signal(signum)
        try:
            app.loaded.wait()  # a quit while loading: start() must have returned before stop() can stop it
            if app.load_error is None:
                sweep.stop()
        except KeyboardInterrupt as e:  # a second Ctrl-C / signal while the trials checkpoint
            force_exit(sweep, exit_code(e))
    if app.load_error is not None:
        raise app.load_error
    # Leave the run's outcome in the scrollback: the alternate screen is gone once the app exits. (After SIGHUP
    # the terminal is gone too: stdout is /dev/null by now, and `say` ignores a reader that went away.)
    say(progress_table(sweep.snapshot()) + "\n" + summary(sweep) + "\n" + where_next(sweep), sys.stdout)
    if app.stop_signal is not None:
        return app.exit_code
    return code if isinstance(code, int) else 0


def run_remote_app(remote: RemoteSweep, load: Callable[[], object] | None = None) -> int:
    """Run the TUI as a client of an engine in another process (`run`, `resume`, `attach`). Leaving never
    touches the engine: `q` → Detach, a hangup, or the engine ending on its own; `q` → Stop and SIGTERM stop it
    (every trial checkpoints and is interrupted). `load` waits for a just-spawned engine to finish loading."""
    from tui_tuner.api.client import RemoteSystem
    from tui_tuner.report import progress_table, say, summary, where_next

    system = RemoteSystem(remote).start()
    app = TuiTunerApp(remote, system=system, load=load, signals=True)
    try:
        code = app.run()
    finally:
        raise_on_stop_signals()
        app.detach()
        system.stop()
        for signum in missed_signals():
            app.stop_by_signal(signum)
    try:
        if app._stopping and app.outcome is None:  # Stop (or SIGTERM) while the engine was still starting
            try:
                app.loaded.wait()
                if app.load_error is None:
                    remote.stop()
            except KeyboardInterrupt:  # a second one: leave the engine to its own graceful stop
                pass
        if app.outcome == "gone" and not app.loaded.is_set():  # it died while loading: load() brings its error
            app.loaded.wait(30)
        if app.load_error is not None:
            raise app.load_error
        run_dir = remote.run_dir
        if app.outcome == "detached" or (app.outcome is None and not app._stopping):
            how = "detached" if app.outcome == "detached" else "the app has exited"
            pid = f" (engine pid {remote.pid})" if remote.pid else ""
            say(f"{how}: the sweep goes on in the background{pid}\n"
                f"  attach: tui-tuner attach {run_dir}\n  stop:   tui-tuner ctl {run_dir} stop\n"
                f"  log:    {run_dir / 'engine.log'}", sys.stdout)
            return app.exit_code  # 0, or 143 when a SIGTERM ended this client
        snap = remote.snapshot()
        gone = f"{remote.gone}\n" if app.outcome == "gone" else ""
        say(gone + progress_table(snap) + "\n" + summary(remote) + "\n" + where_next(remote), sys.stdout)
    finally:
        remote.close()
    if app.stop_signal is not None:
        return app.exit_code
    return code if isinstance(code, int) else 0
