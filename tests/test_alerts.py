"""Alerts (issue 14): the bell and a notification when the sweep finishes, a trial fails, or a new best appears;
each switched by the preset's [alerts] and from the command palette."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_preset_dict
from tui_tuner import Preset, Sweep
from tui_tuner.engine.events import Event
from tui_tuner.engine.snapshot import SweepSnapshot, TrialSnapshot
from tui_tuner.format import fmt_loss
from tui_tuner.preset import AlertsSection, PresetError
from tui_tuner.ui.alerts import AlertWatcher
from tui_tuner.ui.app import TuiTunerApp

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the watcher, on snapshots as the engine makes them ---------------------------------------------------------
def _snap(*trials: TrialSnapshot, phase: str = "running", best: tuple[int, float] | None = None,
          halted: str | None = None) -> SweepSnapshot:
    return SweepSnapshot(study_name="s", sampler="tpe", pruner="median", concurrency=2, n_trials=4, started_at=0.0,
                         elapsed=1.0, finished=phase == "finished", trials=trials, phase=phase, halted=halted,
                         best_trial=best[0] if best else None, best_value=best[1] if best else None)


def _t(n: int, state: str, error: str | None = None) -> TrialSnapshot:
    return TrialSnapshot(number=n, state=state, step=5, total_steps=10, params={}, overrides={},  # type: ignore[arg-type]
                         error=error)


def _ev(kind: str, message: str, earlier: bool = False) -> Event:
    return Event(seq=1, time=0.0, kind=kind, trial=None, message=message, earlier=earlier)


def test_watcher_alerts_on_each_transition_once() -> None:
    w = AlertWatcher(AlertsSection())
    assert w.observe(_snap(_t(0, "running"), _t(1, "running"))) == []  # the baseline
    got = w.observe(_snap(_t(0, "complete"), _t(1, "failed", "CUDA error: boom"), best=(0, 1.25)))
    assert [(a.kind, a.message, a.severity) for a in got] == [
        ("trial_failed", "trial #1 failed: CUDA error: boom", "error"),
        ("new_best", "new best: trial #0, eval loss 1.250", "information")]
    assert w.observe(_snap(_t(0, "complete"), _t(1, "failed"), best=(0, 1.25))) == []  # nothing new
    got = w.observe(_snap(_t(0, "complete"), _t(1, "failed"), _t(2, "complete"), best=(2, 1.0)))
    assert [a.message for a in got] == ["new best: trial #2, eval loss 1.000 (was 1.250)"]
    assert w.on_event(_ev("completed", "trial 2 completed")) == []
    got = w.on_event(_ev("sweep_finished", "sweep finished: budget spent"))
    assert [(a.message, a.severity) for a in got] == [
        ("sweep finished: budget spent; best trial #2, eval loss 1.000", "information")]


def test_watcher_ignores_what_happened_before_it_watched() -> None:
    w = AlertWatcher(AlertsSection())
    assert w.observe(_snap(phase="loading")) == []  # a resumed run loading: its history is not read back yet
    # Loaded: an earlier failure and a best are the baseline, not news; so is an earlier process's end.
    assert w.observe(_snap(_t(0, "failed", "x"), _t(1, "complete"), best=(1, 2.0))) == []
    assert w.on_event(_ev("sweep_finished", "sweep finished: budget spent", earlier=True)) == []
    # A trial that failed before any snapshot saw it run (its params invalid when asked) is news.
    got = w.observe(_snap(_t(0, "failed", "x"), _t(1, "complete"), _t(2, "failed"), best=(1, 2.0)))
    assert [a.message for a in got] == ["trial #2 failed: no reason recorded"]


def test_watcher_halt_and_preset_switches() -> None:
    w = AlertWatcher(AlertsSection(new_best=False, trial_failed=False))
    w.observe(_snap(_t(0, "running")))
    assert w.observe(_snap(_t(0, "failed", "e"), halted="sampler error: e")) == []  # both switched off
    assert w.on_event(_ev("sweep_halted", "sweep halted: sampler error: e")) == []  # told once, by the end
    got = w.on_event(_ev("sweep_finished", "sweep finished: halted: sampler error: e"))
    assert [(a.kind, a.message, a.severity) for a in got] == [
        ("sweep_finished", "sweep finished: halted: sampler error: e; no trial completed", "error")]
    assert w.toggle("trial_failed") is True and w.toggle("bell") is False
    with pytest.raises(ValueError, match="unknown alert 'nope'"):
        w.toggle("nope")


def test_alerts_section_rejects_unknown_keys_and_wrong_types() -> None:
    with pytest.raises(PresetError, match=r"alerts\.belll: unknown key \(did you mean 'bell'\?\)"):
        Preset.from_dict(tiny_preset_dict(alerts={"belll": False}))
    with pytest.raises(PresetError, match=r"--set alerts\.new_best: Input should be a valid boolean"):
        Preset.from_dict(tiny_preset_dict(), overrides=["alerts.new_best=sometimes"])
    assert Preset.from_dict(tiny_preset_dict(), overrides=["alerts.bell=false"]).alerts.bell is False


# -- the app, on a real tiny sweep, direct and over the control API ---------------------------------------------
QUICK = {"params": {"max_steps": 20, "eval_interval": 10, "batch_size": 8, "eval_batches": 1},
         "study": {"n_trials": 2, "concurrency": 2, "pruner": "none"}}


@pytest.fixture(params=["direct", "api"])
def quick_app(request: pytest.FixtureRequest, tmp_path: Path, serve: Callable[..., Any],
              monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[TuiTunerApp, Sweep, list[float]]]]:
    """An app whose sweep it starts itself (after its first paint, as `tui-tuner run` does), and the times its
    bell rang. App.bell writes BEL to the terminal; recording it is the one thing replaced."""
    made: list[Sweep] = []
    rings: list[float] = []
    monkeypatch.setattr(TuiTunerApp, "bell", lambda self: rings.append(time.monotonic()))

    def factory(**alerts: bool) -> tuple[TuiTunerApp, Sweep, list[float]]:
        sweep = Sweep(Preset.from_dict(tiny_preset_dict(alerts=alerts, **QUICK)), tmp_path / "run")
        made.append(sweep)
        source = serve(sweep) if request.param == "api" else sweep
        return TuiTunerApp(source, refresh_s=0.2, load=sweep.start), sweep, rings

    yield factory
    for s in made:
        s.stop(timeout=60)


def _alerts_shown(app: TuiTunerApp) -> list[str]:
    return [n.message for n in app._notifications if n.title == "alert"]


async def _until(cond: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_sweep_finishing_rings_and_notifies(quick_app: Callable[..., Any]) -> None:
    app, sweep, rings = quick_app()
    async with app.run_test(size=(80, 24)):
        await _until(lambda: any(m.startswith("sweep finished") for m in _alerts_shown(app)))
        shown = _alerts_shown(app)
        best = sweep.snapshot()
        assert shown[-1] == (f"sweep finished: budget spent; best trial #{best.best_trial}, eval loss "
                             f"{fmt_loss(best.best_value)}")
        assert any(m.startswith("new best: trial #") for m in shown)  # the first completed trial is a new best
        assert rings, "the bell did not ring"
        n = len(rings)
        await asyncio.sleep(0.6)  # more refreshes of a finished sweep: nothing new, no more alerts
        assert len(rings) == n and _alerts_shown(app) == shown


async def test_alerts_switched_off_in_the_preset_stay_quiet(quick_app: Callable[..., Any]) -> None:
    app, sweep, rings = quick_app(bell=False, sweep_finished=False)
    async with app.run_test(size=(80, 24)):
        await _until(lambda: sweep.finished)
        await _until(lambda: any(m.startswith("new best") for m in _alerts_shown(app)))
        await asyncio.sleep(0.6)  # refreshes after the end
        assert not any(m.startswith("sweep finished") for m in _alerts_shown(app))
        assert rings == []  # bell = false: notifications only


async def test_palette_toggles_an_alert(tmp_path: Path) -> None:
    from tests.test_ui_snapshots import FakeSweep, FakeSystem

    app = TuiTunerApp(FakeSweep(), system=FakeSystem(), live=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.alerts.enabled["new_best"] is True
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"Alerts: new best")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.alerts.enabled["new_best"] is False
        assert any(n.message == "alerts: new best off" for n in app._notifications)
        # The watcher honours it: a better trial now says nothing.
        snap = app.source.snapshot()
        better = dataclasses.replace(snap, best_trial=9, best_value=(snap.best_value or 1.0) / 2)
        assert app.alerts.observe(better) == []
