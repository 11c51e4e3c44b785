"""Layout snapshots of the TUI at 80×24, 120×40 and 200×60, of the Insight tab, the comparison screen and the fork
dialog, from a fixed fake sweep (layout only)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tui_tuner import Preset
from tui_tuner.engine.events import Event
from tui_tuner.engine.fork_plan import ForkPlan
from tui_tuner.engine.snapshot import (
    STATES,
    CheckpointView,
    Insight,
    InsightPoint,
    ParamInsight,
    SweepSnapshot,
    TrialSnapshot,
)
from tui_tuner.engine.system import SystemSample
from tui_tuner.params import TrialParams
from tui_tuner.training.schedules import planned_lrs
from tui_tuner.ui.app import TuiTunerApp

T0 = 1_700_000_000.0
PRESET = Preset.from_dict({
    "name": "snap", "model": {"name": "builtin:tiny-llama"}, "data": {"train": "builtin:progressions"},
    "params": {"max_steps": 1000, "eval_interval": 100, "learning_rate": 3e-3},
    "search": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
               "weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
    "study": {"n_trials": 8, "concurrency": 2},
})


def _trial(n: int, state: str, step: int, lr: float, **kw: Any) -> TrialSnapshot:
    loss = 1.0 + 3.0 * math.exp(-step / (200 + 40 * n))
    return TrialSnapshot(
        number=n, state=state, step=step, total_steps=1000, params={"learning_rate": lr, "weight_decay": 0.01 * n},
        overrides={}, loss=loss, eval_loss=loss + 0.05, best_eval_loss=loss + 0.04, lr=lr * 0.5,
        tokens_per_s=12000.0 + 100 * n, mem_bytes=400 << 20, peak_mem_bytes=(410 + n) << 20,
        own_mem_bytes=(3 + n) << 20, device="cpu",
        checkpoints=tuple(CheckpointView(s, 1.0 + 3.0 * math.exp(-s / (200 + 40 * n)), f"/r/{n}/step-{s}")
                          for s in range(200, step + 1, 200)),
        version=step, **kw)


TRIALS = (
    _trial(0, "complete", 1000, 3e-3, started_at=T0, finished_at=T0 + 400),
    _trial(1, "running", 640, 1e-3, started_at=T0 + 5, steps_per_s=2.0),
    _trial(2, "paused", 420, 5e-4, started_at=T0 + 10, steps_per_s=2.1),
    _trial(3, "pruned", 300, 8e-3, started_at=T0 + 400, finished_at=T0 + 520,
           user_attrs={"origin": "sampler", "pruned_at_step": 300, "pruned_reason": "pruned at step 300 by median"}),
    _trial(4, "running", 560, 2e-3, parent=1, fork_step=400, origin="fork", started_at=T0 + 520, steps_per_s=1.5),
    TrialSnapshot(number=5, state="waiting", step=0, total_steps=None, params={}, overrides={}),
)
EVENTS = [Event(i + 1, T0 + 5 * i, kind, trial, msg) for i, (kind, trial, msg) in enumerate((
    ("sweep_started", None, "sweep snap started in /runs/snap"), ("started", 0, "trial 0 started"),
    ("started", 1, "trial 1 started"), ("complete", 0, "trial 0 completed: eval loss 1.050"),
    ("paused", 2, "trial 2 paused at step 420"), ("pruned", 3, "trial 3 pruned at step 300"),
    ("forked", 4, "trial 4 forked from trial 1 at step 400"),
))]

INSIGHT = Insight(finished=2, complete=1, params=tuple(
    ParamInsight(name, share, log=name == "learning_rate", bounds=(PRESET.search[name].low, PRESET.search[name].high),
                 points=tuple(
        InsightPoint(t.number, t.params[name], t.eval_loss or 0.0, t.state) for t in TRIALS if t.state in
        ("complete", "pruned")))
    for name, share in (("learning_rate", 0.8), ("weight_decay", 0.2))))


class FakeSweep:
    """Same read API as Sweep, fixed data; commands do nothing. For layout snapshots only."""

    preset = PRESET
    run_dir = Path("/runs/demo")
    concurrency = 2

    def snapshot(self) -> SweepSnapshot:
        counts = {s: sum(t.state == s for t in TRIALS) for s in STATES}
        return SweepSnapshot(study_name="snap", sampler="tpe", pruner="median", concurrency=2, n_trials=8,
                             started_at=T0, elapsed=754.0, finished=False, trials=TRIALS, counts=counts,
                             best_trial=0, best_value=TRIALS[0].eval_loss, slots_used=2)

    def series(self, n: int, key: str = "loss", max_points: int | None = 200) -> list[tuple[float, float]]:
        t = TRIALS[n]
        every = 100 if key == "eval_loss" else 10
        pts = []
        for s in range(every, t.step + 1, every):
            k = 200 + 40 * (t.parent if t.parent is not None and s <= (t.fork_step or 0) else n)
            if key == "lr":
                pts.append((s, 1e-3 * 0.5 * (1 + math.cos(math.pi * s / 1000))))
            else:
                pts.append((s, 1.0 + 3.0 * math.exp(-s / k) + (0.05 if key == "eval_loss" else 0.0)))
        return pts

    def lr_plan(self, n: int, points: int = 200) -> list[tuple[int, float]]:
        return [(s, 1e-3 * 0.5 * (1 + math.cos(math.pi * s / 1000))) for s in range(0, 1001, 10)]

    def insight(self) -> Insight:
        return INSIGHT

    def events_since(self, seq: int = 0) -> list[Event]:
        return [e for e in EVENTS if e.seq > seq]

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        return lambda: None

    def pause(self, n: int) -> None: ...
    def resume(self, n: int) -> None: ...
    def kill(self, n: int) -> None: ...
    def set_concurrency(self, k: int) -> None: ...
    def enqueue(self, params: dict[str, Any]) -> int: return 6
    def fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None) -> int: return 6

    def check_fork(self, n: int, step: int | None = None, params: dict[str, Any] | None = None,
                   points: int = 200) -> ForkPlan:
        at = TRIALS[n].step if step is None else step
        p = TrialParams.model_validate({**PRESET.params.model_dump(), **TRIALS[n].params, **(params or {})})
        end = p.max_steps or 1000
        return ForkPlan(step=at, now=step is None, total_steps=end, peak_lr=p.learning_rate,
                        plan=tuple(planned_lrs(p, end, points, start=at)))
    def stop(self, timeout: float | None = None) -> None: ...


class FakeSystem:
    def start(self) -> FakeSystem:
        return self

    def latest(self) -> SystemSample:
        return SystemSample(time=T0, cpu_percent=62.0, ram_used=6 << 30, ram_total=16 << 30,
                            reason="no NVIDIA GPU: NVML Shared Library Not Found")

    def stop(self) -> None: ...


def _app() -> TuiTunerApp:
    return TuiTunerApp(FakeSweep(), system=FakeSystem(), live=False)  # type: ignore[arg-type]


def test_main_80x24(snap_compare: Any) -> None:
    assert snap_compare(_app(), terminal_size=(80, 24))


def test_main_120x40(snap_compare: Any) -> None:
    assert snap_compare(_app(), terminal_size=(120, 40))


async def _until_insight(pilot: Any) -> None:
    """The Insight panel fills from a thread: wait for it, so the snapshot does not race it."""
    for _ in range(200):
        if pilot.app.query_one("InsightPanel").insight is not None:
            await pilot.pause()
            return
        await pilot.pause(0.02)
    raise AssertionError("the insight never came")


def test_main_200x60_wide(snap_compare: Any) -> None:
    assert snap_compare(_app(), run_before=_until_insight, terminal_size=(200, 60))


def test_insight_tab_80x24(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await pilot.press("5")
        await _until_insight(pilot)

    assert snap_compare(_app(), run_before=run_before, terminal_size=(80, 24))


def test_compare_80x24(snap_compare: Any) -> None:
    async def run_before(pilot: Any) -> None:
        await pilot.press("c", "down", "down", "down", "down", "c")  # #0 (selected first) marked, then the fork #4
        pilot.app.clear_notifications()  # the "marked" toast would hide the LR chart's axis
        await pilot.pause()

    assert snap_compare(_app(), run_before=run_before, terminal_size=(80, 24))


def test_system_tab_80x24(snap_compare: Any) -> None:
    assert snap_compare(_app(), press=["3"], terminal_size=(80, 24))


async def _until_previewed(pilot: Any) -> None:
    """Trial 1 selected, f, then wait for the engine's check (a thread) to fill the LR preview."""
    await pilot.press("down", "f")
    for _ in range(200):
        await pilot.pause(0.02)
        found = pilot.app.screen.query("#lr-preview")
        if found and str(found.first().render()):
            return
    raise AssertionError("the fork dialog's LR preview never came")


async def _detail_of_3(pilot: Any) -> None:
    """The pruned trial's detail screen: its reason, params, attrs, checkpoints and charts."""
    await pilot.press("down", "down", "down", "enter")
    await pilot.pause()
    await pilot.pause()


def test_detail_80x24(snap_compare: Any) -> None:
    assert snap_compare(_app(), run_before=_detail_of_3, terminal_size=(80, 24))


def test_detail_120x40(snap_compare: Any) -> None:
    assert snap_compare(_app(), run_before=_detail_of_3, terminal_size=(120, 40))


def test_fork_dialog(snap_compare: Any) -> None:
    assert snap_compare(_app(), run_before=_until_previewed, terminal_size=(80, 24))
