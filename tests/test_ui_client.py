"""Pilot tests of the app against torch-free sweeps: first paint while loading, the Events panel, queued kills."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_preset_dict
from tests.fake_backend import FakeBackend
from tests.test_ui_snapshots import FakeSweep, FakeSystem
from tui_tuner import Preset, Sweep
from tui_tuner.engine.events import Event
from tui_tuner.preset import PresetError
from tui_tuner.ui.app import TuiTunerApp
from tui_tuner.ui.dialogs import ConfirmScreen
from tui_tuner.ui.event_log import EventLogPanel
from tui_tuner.ui.status_line import StatusLine
from tui_tuner.ui.trials_table import TrialsTable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class SlowLoad(FakeBackend):
    """prepare() (the model and data load inside start()) waits until the test releases it, or fails."""

    def __init__(self, fail: Exception | None = None) -> None:
        super().__init__(step_s=0.01)
        self.release = threading.Event()
        self.fail = fail

    def prepare(self, preset: Preset) -> int:
        assert self.release.wait(30), "the test never released the load"
        if self.fail is not None:
            raise self.fail
        return super().prepare(preset)


@pytest.fixture
def sweeps() -> Iterator[list[Sweep]]:
    made: list[Sweep] = []
    yield made
    for s in made:
        s.stop(timeout=30)


def fake_sweep(sweeps: list[Sweep], run_dir: Path, backend: FakeBackend, **sections: dict[str, Any]) -> Sweep:
    sections.setdefault("params", {"max_steps": 400})
    s = Sweep(Preset.from_dict(tiny_preset_dict(**sections)), run_dir, backend=backend)
    sweeps.append(s)
    return s


def status(app: TuiTunerApp) -> str:
    return str(app.query_one(StatusLine).render())


# -- first paint before the model loads -------------------------------------------------------------------------
async def test_app_paints_while_the_sweep_loads_then_fills_in(tmp_path: Path, sweeps: list[Sweep]) -> None:
    backend = SlowLoad()
    sweep = fake_sweep(sweeps, tmp_path / "run", backend)
    app = TuiTunerApp(sweep, refresh_s=0.1, load=sweep.start)
    async with app.run_test(size=(80, 24)):
        await until(lambda: "loading model builtin:tiny-llama" in status(app), what="the loading status")
        assert "preset test" in status(app) and " test " in status(app)  # study and preset named
        assert app.query_one(TrialsTable).row_count == 0 and not app.loaded.is_set()
        backend.release.set()
        await until(lambda: app.query_one(TrialsTable).row_count == 2, what="trials in the table")
        await until(lambda: "running" in status(app) and "loading" not in status(app), what="the running status")
        assert app.load_error is None


async def test_a_failed_start_exits_the_app_and_keeps_the_error(tmp_path: Path, sweeps: list[Sweep]) -> None:
    backend = SlowLoad(fail=PresetError("data.train: x.jsonl: no such file"))
    sweep = fake_sweep(sweeps, tmp_path / "run", backend)
    app = TuiTunerApp(sweep, refresh_s=0.1, load=sweep.start)
    async with app.run_test(size=(80, 24)):
        await until(lambda: "loading" in status(app), what="the loading status")
        backend.release.set()
        await until(lambda: not app.is_running, what="the app to exit")
    assert isinstance(app.load_error, PresetError) and "no such file" in str(app.load_error)


async def test_quit_while_loading_leaves_at_once(tmp_path: Path, sweeps: list[Sweep]) -> None:
    backend = SlowLoad()
    sweep = fake_sweep(sweeps, tmp_path / "run", backend)
    app = TuiTunerApp(sweep, refresh_s=0.1, load=sweep.start)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(lambda: "loading" in status(app), what="the loading status")
        await pilot.press("q")
        await until(lambda: isinstance(app.screen, ConfirmScreen), what="the quit dialog")
        assert str(sweep.run_dir) in app.screen.question  # type: ignore[attr-defined]  # not RUN_DIR
        await pilot.press("y")
        await until(lambda: not app.is_running, what="the app to exit")
    assert not app.loaded.is_set()  # it did not wait for the load (run_app does, before stopping the sweep)
    backend.release.set()


# -- the Events panel -------------------------------------------------------------------------------------------
class LiveFake(FakeSweep):
    """The snapshot tests' fixed sweep, plus events the test emits as the engine would (from another thread)."""

    def __init__(self, backfill: int = 0) -> None:
        self.log: list[Event] = [self._event(i) for i in range(1, backfill + 1)]
        self.listeners: list[Callable[[Event], None]] = []
        self.on_subscribe: Callable[[], None] = lambda: None

    @staticmethod
    def _event(seq: int) -> Event:
        # Longer than 80 columns, so wrapping (not cutting) shows.
        return Event(seq, time.time(), "started", seq % 5, f"event {seq:03d}: trial {seq % 5} started with "
                     f"learning_rate=0.00{seq} weight_decay=0.0{seq} batch_size=8 lora_r=4 end-{seq:03d}")

    def events_since(self, seq: int = 0) -> list[Event]:
        return [e for e in self.log if e.seq > seq]

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        self.listeners.append(fn)
        self.on_subscribe()
        return lambda: self.listeners.remove(fn)

    def emit(self, seqs: range | list[int]) -> None:
        def run() -> None:
            for seq in seqs:
                ev = self._event(seq)
                if ev.seq > (self.log[-1].seq if self.log else 0):
                    self.log.append(ev)
                for fn in list(self.listeners):
                    fn(ev)

        t = threading.Thread(target=run)
        t.start()
        t.join()


def shown(panel: EventLogPanel) -> str:
    return " ".join(" ".join(line.text.split()) for line in panel.lines)


def assert_all_once_newest_last(panel: EventLogPanel, seqs: range) -> None:
    text = shown(panel)
    for seq in seqs:
        assert text.count(f"event {seq:03d}:") == 1, (seq, text)
        assert f"end-{seq:03d}" in text  # the line's tail: wrapped, not cut at the panel's edge
    assert panel.lines[-1].text.rstrip().endswith(f"end-{seqs[-1]:03d}")
    assert [e.seq for e in panel.events] == list(seqs)
    # scrolled to the end: the newest line is in view
    assert panel.max_scroll_y > 0 and panel.scroll_y == panel.max_scroll_y
    width = panel.scrollable_content_region.width
    assert all(line.cell_length <= width for line in panel.lines)


async def test_events_that_arrive_while_the_tab_is_hidden_show_after_switching_and_resizing() -> None:
    source = LiveFake(backfill=3)
    app = TuiTunerApp(source, system=FakeSystem(), live=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.panel == "loss"  # under 140x40 the Events panel is a hidden tab
        source.emit(range(4, 41))
        await pilot.pause()
        await pilot.press("4")
        await pilot.pause()
        await pilot.pause()
        panel = app.query_one(EventLogPanel)
        assert_all_once_newest_last(panel, range(1, 41))
        await pilot.press("1")  # hidden again; more arrive; then a resize, then shown
        source.emit(range(41, 51))
        await pilot.resize_terminal(100, 30)
        await pilot.press("4")
        await pilot.pause()
        await pilot.pause()
        assert_all_once_newest_last(panel, range(1, 51))
        await pilot.resize_terminal(70, 24)  # narrower while shown: rewrapped, still at the end
        await pilot.pause()
        await pilot.pause()
        assert_all_once_newest_last(panel, range(1, 51))


async def test_no_duplicates_when_backfill_and_subscription_race() -> None:
    source = LiveFake(backfill=20)
    # Between subscribe() and events_since(0) the engine emits 21..25: the subscription delivers them and the
    # backfill has them too; 18..20 are delivered again (out of order) by a listener racing another thread.
    source.on_subscribe = lambda: source.emit([21, 22, 23, 24, 25, 19, 18, 20])
    app = TuiTunerApp(source, system=FakeSystem(), live=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        source.emit([27, 26, 28])  # out of order: 26 is still shown, in its place
        await pilot.press("4")
        await pilot.pause()
        await pilot.pause()
        assert_all_once_newest_last(app.query_one(EventLogPanel), range(1, 29))


async def test_a_resumed_run_shows_its_earlier_events_once(tmp_path: Path, sweeps: list[Sweep]) -> None:
    """Needs the engine's `events_since(0)` to include the events of the run's earlier processes."""
    first = fake_sweep(sweeps, tmp_path / "run", FakeBackend(step_s=0.01), study={"n_trials": 1, "concurrency": 1})
    first.start()
    await until(lambda: first.trials() and first.trials()[0].step >= 3, what="a few steps")
    first.stop()
    backend = SlowLoad()
    again = Sweep.open(tmp_path / "run", backend=backend)
    sweeps.append(again)
    app = TuiTunerApp(again, refresh_s=0.1, load=again.start)
    async with app.run_test(size=(80, 24)) as pilot:
        backend.release.set()
        await until(app.loaded.is_set, what="the load")
        await pilot.press("4")
        await until(lambda: shown(app.query_one(EventLogPanel)).count("sweep stopped") == 1,
                    what="the first process's sweep_stopped event")
        text = shown(app.query_one(EventLogPanel))
        assert text.count("sweep test started") == 2  # the first process's start, and this one's
        seqs = [e.seq for e in app.query_one(EventLogPanel).events]
        assert seqs == sorted(set(seqs))


# -- new state words --------------------------------------------------------------------------------------------
async def test_kill_on_a_queued_trial_asks_to_cancel_it(tmp_path: Path, sweeps: list[Sweep]) -> None:
    backend = FakeBackend(step_s=0.01)
    backend.gate.clear()  # trial 0 holds its slot between steps, so the enqueued trial stays queued
    sweep = fake_sweep(sweeps, tmp_path / "run", backend, study={"n_trials": 1, "concurrency": 1})
    sweep.start()
    await until(lambda: any(t.state == "running" for t in sweep.trials()), what="trial 0 running")
    n = sweep.enqueue({"learning_rate": 1e-3})
    app = TuiTunerApp(sweep, refresh_s=0.1)
    async with app.run_test(size=(100, 30)) as pilot:
        table = app.query_one(TrialsTable)
        await until(lambda: table.row_count == 2, what="both rows")
        table.move_cursor(row=table.get_row_index(str(n)))
        await pilot.press("k")
        await until(lambda: isinstance(app.screen, ConfirmScreen), what="the confirm dialog")
        assert f"Cancel queued trial #{n}?" in app.screen.question  # type: ignore[attr-defined]
        await pilot.press("y")
        await until(lambda: sweep.trial(n).state == "cancelled", what="the cancel")
        assert sweep.trial(0).state == "running"
    backend.gate.set()
