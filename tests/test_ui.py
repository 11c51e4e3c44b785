"""Pilot tests of the TUI against a real tiny sweep: pause/resume, kill, fork, concurrency, quit. Each runs twice:
with the app calling the engine directly, and as `tui-tuner attach` does, over the control API's socket."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import textual.app
import textual.pilot
from optuna.trial import TrialState
from textual.widgets import Input

from tests.test_ui_snapshots import TRIALS, FakeSweep
from tui_tuner import Preset, Sweep
from tui_tuner.ui.app import TuiTunerApp
from tui_tuner.ui.dialogs import ConfirmScreen, ParamsDialog, QuitScreen

PRESET = {
    "name": "ui", "model": {"name": "builtin:tiny-llama"}, "data": {"train": "builtin:progressions", "max_length": 48},
    "params": {"max_steps": 20000, "eval_interval": 20, "batch_size": 8, "eval_batches": 2, "learning_rate": 3e-3},
    "search": {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "study": {"n_trials": 3, "concurrency": 2}, "checkpoints": {"interval": 20},
}


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def quick_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Textual's pilot waits for the *process* to go idle (up to 1 s per key); training threads never let it.
    Tests here wait on explicit conditions instead."""

    async def short_wait(min_sleep: float = 0.0, max_sleep: float = 1.0) -> None:
        await asyncio.sleep(max(0.02, min(min_sleep, 0.1)))

    monkeypatch.setattr(textual.app, "wait_for_idle", short_wait)
    monkeypatch.setattr(textual.pilot, "wait_for_idle", short_wait)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tiny model is built once per session (conftest may already point the cache somewhere)."""
    os.environ.setdefault("TUI_TUNER_CACHE", str(tmp_path_factory.mktemp("model-cache")))


CLIENTS: dict[int, Any] = {}  # id(sweep) -> the RemoteSweep the app uses instead, in the "api" runs


@pytest.fixture(params=["direct", "api"])
def sweep(model_cache: None, tmp_path: Path, request: pytest.FixtureRequest,
          serve: Callable[..., Any]) -> Iterator[Sweep]:
    s = Sweep(Preset.from_dict(PRESET), tmp_path / "run").start()
    if request.param == "api":
        CLIENTS[id(s)] = serve(s)
    yield s
    CLIENTS.pop(id(s), None)
    s.stop()


async def until(pilot: object, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)  # not pilot.pause: waiting for idle is slow while trials train


def study_state(sweep: Sweep, n: int) -> TrialState:
    with sweep.study_lock:
        return sweep.study.get_trials(deepcopy=False)[n].state


def running(sweep: Sweep, n: int, min_step: int = 1, state: str = "running") -> bool:
    t = next((t for t in sweep.snapshot().trials if t.number == n), None)
    return t is not None and t.state == state and t.step >= min_step


def app_for(sweep: Sweep) -> TuiTunerApp:
    return TuiTunerApp(CLIENTS.get(id(sweep), sweep), refresh_s=0.2)


async def test_pause_then_resume_selected_trial(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: running(sweep, 0) and app.query_one("TrialsTable").selected == 0)
        await pilot.press("p")
        await until(pilot, lambda: sweep.trial(0).state == "paused")
        await asyncio.sleep(0.35)  # past the debounce
        await pilot.press("p")
        await until(pilot, lambda: sweep.trial(0).state == "running")


async def test_repeated_key_is_debounced(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(100, 30)):
        for _ in range(3):  # a held key: three repeats well within the debounce window
            app.action_concurrency(1)
        assert sweep.concurrency == 3


async def test_kill_with_confirm_prunes_in_optuna(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: running(sweep, 0))
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: study_state(sweep, 0) == TrialState.PRUNED)
        assert sweep.trial(0).stopped_by_user


async def test_kill_cancelled_leaves_trial_running(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(100, 30)) as pilot:
        await until(pilot, lambda: running(sweep, 0))
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause(0.3)
        assert sweep.trial(0).state == "running"


async def open_fork_dialog(pilot: textual.pilot.Pilot, sweep: Sweep, state: str = "running") -> None:
    """Once trial 0 has trained a little and has a checkpoint, press f on it (the selected row)."""
    await until(pilot, lambda: running(sweep, 0, min_step=25, state=state) and bool(sweep.trial(0).checkpoints))
    await pilot.press("f")
    await until(pilot, lambda: isinstance(pilot.app.screen, ParamsDialog) and bool(pilot.app.screen.query(Input)))


async def test_fork_creates_child_of_selected_trial(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_fork_dialog(pilot, sweep)
        lr = app.screen.query_one("#param-learning_rate")
        lr.value = "0.002"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")

        def child() -> dict | None:
            with sweep.study_lock:
                for t in sweep.study.get_trials(deepcopy=False):
                    if t.user_attrs.get("origin") == "fork":
                        return {"parent": t.user_attrs["parent_trial"],
                                "params": t.params or t.system_attrs.get("fixed_params", {})}
            return None

        await until(pilot, lambda: child() is not None)
        c = child()
        assert c is not None and c["parent"] == 0
        assert c["params"]["learning_rate"] == pytest.approx(0.002)


async def test_fork_dialog_keeps_invalid_edits_on_screen_with_the_reason(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_fork_dialog(pilot, sweep)
        dialog = app.screen
        dialog.query_one("#param-max_steps").value = ""  # type: ignore[attr-defined]
        dialog.query_one("#param-weight_decay").value = "0.25"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        # The engine refused it: the dialog stays, with the reason and every edit.
        await until(pilot, lambda: str(dialog.query_one("#dialog-error").render())
                    == "fork: params: set max_steps or epochs" and not dialog._busy)
        assert app.screen is dialog
        assert dialog.query_one("#param-weight_decay").value == "0.25"  # type: ignore[attr-defined]
        with sweep.study_lock:
            assert not any(t.user_attrs.get("origin") == "fork" for t in sweep.study.get_trials(deepcopy=False))
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is not dialog)
        # ...and it is in the Events panel, for this client as for any other.
        await pilot.press("4")
        await until(pilot, lambda: any(e.kind == "refused" for e in app.query_one("EventLogPanel").events))
        (ev,) = [e for e in app.query_one("EventLogPanel").events if e.kind == "refused"]
        assert ev.message == "fork of trial 0 refused: params: set max_steps or epochs"


async def test_plus_raises_concurrency(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("+")
        await until(pilot, lambda: sweep.concurrency == 3)
        await asyncio.sleep(0.35)
        await pilot.press("-")
        await until(pilot, lambda: sweep.concurrency == 2)


async def test_bad_command_is_notified_not_raised(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(80, 24)) as pilot:
        sweep.set_concurrency(1)
        await until(pilot, lambda: app.source.concurrency == 1)  # a remote client sees it within a refresh
        await pilot.press("-")  # concurrency 0: SweepError
        await until(pilot, lambda: any(n.severity == "error" for n in app._notifications))
        assert sweep.concurrency == 1


async def test_quit_stops_sweep_and_leaves_nothing_running(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: running(sweep, 0) and running(sweep, 1))
        await pilot.press("q")
        if app.remote:  # an engine of its own: q offers Detach / Stop / Cancel
            await until(pilot, lambda: isinstance(app.screen, QuitScreen))
            await pilot.press("s")
        else:
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
        await until(pilot, lambda: sweep.finished and app.return_value == 0)
    with sweep.study_lock:
        stored = sweep.study.get_trials(deepcopy=False)
    # Nothing RUNNING is unaccounted for: each trial the quit stopped is interrupted (never told), to resume.
    assert all("interrupted_at_step" in t.user_attrs for t in stored if t.state == TrialState.RUNNING)
    assert {t.state for t in sweep.trials()} <= {"interrupted", "complete"}
    assert not app._accepting


async def test_detach_leaves_the_engine_running(sweep: Sweep) -> None:
    app = app_for(sweep)
    if not app.remote:
        pytest.skip("detaching needs an engine in another process (here: behind the control API)")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: running(sweep, 0))
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.press("escape")  # cancel: nothing happens
        await until(pilot, lambda: not isinstance(app.screen, QuitScreen))
        await asyncio.sleep(0.35)  # past the quit key's debounce
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, QuitScreen))
        await pilot.press("d")
        await until(pilot, lambda: app.return_value == 0)
    assert app.outcome == "detached"
    step = sweep.trial(0).step
    time.sleep(0.5)
    assert sweep.trial(0).state == "running" and sweep.trial(0).step > step  # it trains on without the client
    assert not sweep.stopping


async def test_detail_and_help_screens_open_and_close(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: running(sweep, 0) and app.query_one("TrialsTable").selected == 0)
        await pilot.press("enter")

        def detail() -> str:
            found = app.screen.query("#detail-text")
            return str(found.first().render()) if found else ""

        await until(pilot, lambda: "learning_rate" in detail())
        assert "origin" in detail() and "checkpoints" in detail()
        # Checkpoints are listed relative to the run dir, named once, so lines fit narrow terminals.
        await until(pilot, lambda: "trials/0/checkpoints/step-20" in detail())
        assert f"(under {sweep.run_dir})" in detail() and f"{sweep.run_dir}/trials" not in detail()
        lr = next(line for line in detail().splitlines() if line.strip().startswith("learning_rate"))
        assert len(lr.split()[1]) <= 12  # 6 significant digits, not repr's 17
        await pilot.press("escape")
        await pilot.press("question_mark")
        await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen")
        await pilot.press("escape")
        await pilot.press("l", "s", "2", "3", "4")
        await until(pilot, lambda: app.log_y and app.panel == "events")


def test_chart_redraws_are_paced_by_their_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """New data redraws a cheap chart every 2 s; one costing 90 ms waits until that is 1.5 % of a core (6 s).
    A change of view (selection, log-y, size) redraws at once whatever the cost."""
    import tui_tuner.ui.app as app_mod

    clock = [100.0]
    monkeypatch.setattr(app_mod.time, "monotonic", lambda: clock[0])
    app = TuiTunerApp(source=None, live=False)  # type: ignore[arg-type]
    assert app._chart_due("loss", "view", 1, 0.01)
    clock[0] += 2.1
    assert app._chart_due("loss", "view", 2, 0.01)
    clock[0] += 2.1
    assert not app._chart_due("loss", "view", 3, 0.09)
    clock[0] += 4.0
    assert app._chart_due("loss", "view", 3, 0.09)
    assert not app._chart_due("loss", "view", 4, 0.09)
    assert app._chart_due("loss", "other view", 4, 0.09)


async def test_event_log_shows_decisions_not_routine_checkpoints() -> None:
    from textual.app import App, ComposeResult

    from tui_tuner.engine.events import Event
    from tui_tuner.ui.event_log import EventLogPanel

    class LogOnly(App[None]):
        def compose(self) -> ComposeResult:
            yield EventLogPanel()

    async with LogOnly().run_test(size=(80, 10)) as pilot:
        panel = pilot.app.query_one(EventLogPanel)
        for seq, (kind, msg) in enumerate([("started", "trial 0 started"), ("checkpoint", "trial 0: checkpoint"),
                                           ("checkpoint_failed", "trial 0: checkpoint at step 5 failed"),
                                           ("killed", "trial 0 killed by the user")], start=1):
            panel.add(Event(seq, time.time(), kind, 0, msg))
        await pilot.pause()
        text = "\n".join(line.text for line in panel.lines)
        assert "started" in text and "failed" in text and "killed" in text
        assert "trial 0: checkpoint\n" not in text + "\n" and panel.last_seq == 4


async def test_enter_in_the_fork_dialog_picks_and_moves_on_only_ctrl_s_forks(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(80, 24)) as pilot:
        # Paused, so that checkpoint rotation (every 20 steps, keep 2) cannot delete the picked one meanwhile;
        # a running parent's vanished checkpoint is refused inline (test_fork_check).
        await until(pilot, lambda: running(sweep, 0, min_step=25) and bool(sweep.trial(0).checkpoints))
        sweep.pause(0)
        await until(pilot, lambda: sweep.trial(0).state == "paused")
        await open_fork_dialog(pilot, sweep, state="paused")
        dialog = app.screen
        await pilot.press("down", "enter")  # the newest checkpoint, picked
        await until(pilot, lambda: getattr(app.focused, "id", None) == "param-learning_rate")
        await pilot.press("enter", "enter")  # Enter in a field moves to the next one
        assert app.screen is dialog and app.focused is not None and app.focused.id != "param-learning_rate"
        # The engine's check previews the child from the picked checkpoint: the LR typed is the schedule's peak.
        # The newest checkpoint the dialog listed when it opened: trial 0 keeps training and may have saved more.
        picked = dialog.trial.checkpoints[-1].step
        assert dialog._step() == picked
        await until(pilot, lambda: dialog.plan is not None and dialog.plan.step == picked)
        preview = str(dialog.query_one("#lr-preview").render())
        assert "is the schedule's peak" in preview and f"child's LR {picked}→" in preview
        assert not any(t.parent == 0 for t in sweep.trials())  # nothing was forked by Enter
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is not dialog)
        child = next(t for t in sweep.trials() if t.parent == 0)
        assert child.fork_step == picked


async def test_every_param_a_fork_may_change_is_editable_and_shape_params_say_why(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_fork_dialog(pilot, sweep)
        dialog = app.screen
        for name in ("schedule", "batch_size", "lora_dropout", "adam_beta1", "adam_beta2", "max_grad_norm",
                     "weight_decay", "warmup_steps", "max_steps", "learning_rate"):
            assert not dialog.query_one(f"#param-{name}").disabled, name
        for name in ("lora_r", "lora_target_modules"):
            row = dialog.query_one(f"#param-{name}").parent
            assert dialog.query_one(f"#param-{name}").disabled
            assert "changes the trained tensors" in str(row.query_one(".param-why").render())
        optimizer = dialog.query_one("#param-optimizer")
        assert optimizer.disabled  # its own reason: a fork keeps the parent's optimizer state
        assert "the parent's optimizer state would not fit" in str(optimizer.parent.query_one(".param-why").render())
        assert not dialog.query("#param-freeze_layers")  # LoRA never reads it
        dialog.query_one("#param-schedule").value = "wsd"  # type: ignore[attr-defined]
        dialog.query_one("#param-adam_beta2").value = "0.95"  # type: ignore[attr-defined]
        dialog.query_one("#param-max_steps").value = "30000"  # type: ignore[attr-defined]
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any(t.parent == 0 for t in sweep.trials()))
        child = next(t for t in sweep.trials() if t.parent == 0)
        assert {k: child.overrides[k] for k in ("schedule", "adam_beta2", "max_steps")} == \
            {"schedule": "wsd", "adam_beta2": 0.95, "max_steps": 30000}
        await until(pilot, lambda: app.screen is not dialog)


async def test_new_trial_takes_the_prefilled_values_exactly(sweep: Sweep) -> None:
    app = app_for(sweep)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: running(sweep, 0) and app.query_one("TrialsTable").selected == 0)
        lr = sweep.trial(0).params["learning_rate"]
        assert len(repr(lr)) > 8  # a sampled float: 6 significant digits would change it
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, ParamsDialog) and bool(app.screen.query("#param-lora_r")))
        assert not app.screen.query_one("#param-lora_r").disabled  # a new trial builds its own tensors
        await pilot.press("enter")  # moves to the next field; submits nothing
        assert isinstance(app.screen, ParamsDialog)
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any(t.origin == "enqueue" for t in sweep.trials()))
        new = next(t for t in sweep.trials() if t.origin == "enqueue")
        assert new.params["learning_rate"] == lr  # exactly, not 6 digits


async def test_palette_has_one_keys_entry_and_the_panels() -> None:
    app = TuiTunerApp(FakeSweep(), live=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert titles.count("Keys") == 1
        assert {"Panel: Loss (1)", "Panel: LR (2)", "Panel: System (3)", "Panel: Events (4)", "Panel: Insight (5)",
                "Compare trials", "Insight: next param"} <= set(commands)
        commands["Panel: Events (4)"].callback()
        assert app.panel == "events"
        commands["Panel: LR (2)"].callback()
        assert app.panel == "lr"
        await pilot.pause()


class LayoutSweep(FakeSweep):
    """The snapshot tests' fixed sweep, with a queued trial the sampler has yet to draw (no plan) and a pruned
    trial that never wrote a checkpoint."""

    def snapshot(self) -> Any:
        snap = super().snapshot()
        return dataclasses.replace(snap, trials=tuple(dataclasses.replace(t, checkpoints=()) if t.number == 3 else t
                                                      for t in snap.trials))

    def lr_plan(self, n: int, points: int = 200) -> list[tuple[int, float]]:
        return [] if TRIALS[n].state == "waiting" else super().lr_plan(n, points)


async def _select(pilot: textual.pilot.Pilot, n: int) -> None:
    table = pilot.app.query_one("TrialsTable")
    for _ in range(10):
        if table.selected == n:
            return
        await pilot.press("down")
    raise AssertionError(f"trial {n} never selected")


async def test_lr_panel_of_a_fork_and_of_a_queued_trial() -> None:
    from tui_tuner.ui.charts import LrChart

    app = TuiTunerApp(LayoutSweep(), live=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await _select(pilot, 4)  # a fork of #1 at step 400
        await pilot.pause()
        chart = app.query_one(LrChart)
        plan, parent, own = chart._datasets
        assert min(plan.x) >= 400 and max(parent.x) <= 400 and min(own.x) > 400  # the child's plan from its fork
        assert "parent #1 to step 400" in chart._x_label and not chart.note
        await _select(pilot, 5)  # queued; learning_rate and weight_decay are drawn when it starts
        await pilot.pause()
        assert chart.note == ("#5 is queued: its LR schedule is known once the sampler draws learning_rate, "
                              "weight_decay (when it starts)")
        assert chart.query_one("#chart-note").display


async def test_fork_of_a_trial_without_a_checkpoint_is_refused_before_the_dialog() -> None:
    app = TuiTunerApp(LayoutSweep(), live=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await _select(pilot, 3)
        await pilot.press("f")
        await pilot.pause()
        assert not isinstance(app.screen, ParamsDialog)
        assert [n.message for n in app._notifications] == ["cannot fork trial #3: it is pruned and has no checkpoint"]


INSIGHT_PRESET = {**PRESET, "params": {**PRESET["params"], "max_steps": 20, "eval_interval": 10},
                  "search": {**PRESET["search"], "weight_decay": {"type": "float", "low": 0.0, "high": 0.1}},
                  "study": {"n_trials": 3, "concurrency": 2, "pruner": "none"}}


@pytest.fixture(params=["direct", "api"])
def short_sweep(model_cache: None, tmp_path: Path, request: pytest.FixtureRequest,
                serve: Callable[..., Any]) -> Iterator[tuple[Sweep, Any]]:
    """A real sweep whose three trials finish in seconds, and the source the app reads it through."""
    s = Sweep(Preset.from_dict(INSIGHT_PRESET), tmp_path / "run").start()
    yield s, serve(s) if request.param == "api" else s
    s.stop()


async def test_insight_panel_shows_importances_once_trials_finish(short_sweep: tuple[Sweep, Any]) -> None:
    from tui_tuner.ui.insight_panel import InsightPanel, ParamScatter

    sweep, source = short_sweep
    app = TuiTunerApp(source, refresh_s=0.2)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        assert app.panel == "insight" and app.query_one(InsightPanel).display
        panel = app.query_one(InsightPanel)
        await until(pilot, lambda: panel.insight is not None and panel.insight.complete == 3, timeout=120)
        assert panel.insight is not None and panel.insight.reason is None
        assert panel.insight == sweep.insight()  # what the engine computed, also through the API
        bars = str(app.query_one("#insight-bars").render())
        assert "learning_rate" in bars and "weight_decay" in bars and "%" in bars
        scatter = app.query_one(ParamScatter)
        first = panel.selected
        await pilot.press("right_square_bracket")
        assert panel.selected != first and panel.selected is not None
        await pilot.press("left_square_bracket")
        assert panel.selected == first
        assert panel.param is not None and len(panel.param.points) == 3
        await pilot.pause()
        xs = [x for d in scatter._datasets for x in d.x]
        assert len(xs) == 3
        if panel.param.log:  # learning_rate: plotted as log10 of the value, inside its searched range
            assert all(-4 <= x <= -2 for x in xs)


async def test_insight_panel_says_why_there_are_no_importances() -> None:
    from tui_tuner.engine.snapshot import Insight
    from tui_tuner.ui.insight_panel import InsightPanel

    class Early(FakeSweep):
        def insight(self) -> Insight:
            return Insight(finished=1, complete=1, reason="PED-ANOVA needs 2 complete trials, 1 so far")

    app = TuiTunerApp(Early(), live=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        panel = app.query_one(InsightPanel)
        await until(pilot, lambda: panel.insight is not None, timeout=10)
        await pilot.pause()
        assert "PED-ANOVA needs 2 complete trials, 1 so far" in str(app.query_one("#insight-bars").render())


async def test_compare_marks_then_opens_two_trials_side_by_side() -> None:
    from tui_tuner.ui.compare_screen import CompareScreen, OverlayChart

    app = TuiTunerApp(FakeSweep(), live=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await _select(pilot, 0)
        await pilot.press("c", "c")  # twice on one trial: marked, then unmarked
        assert app.compare_mark is None and not isinstance(app.screen, CompareScreen)
        await pilot.press("c")
        assert app.compare_mark == 0
        await _select(pilot, 4)
        await pilot.press("c")
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, CompareScreen) and screen.numbers == (0, 4) and app.compare_mark is None
        rows = {r[0]: r[1:] for r in screen.rows}
        assert rows["learning_rate"] == ("0.003", "0.002", True)
        assert rows["state"] == ("complete", "running", True)
        assert rows["lineage"] == ("—", "#1 > #4@400", True)
        assert rows["overrides"] == ("—", "—", False)
        loss = screen.query_one("#compare-loss", OverlayChart)
        assert [label for label in loss._labels if label] == ["#0", "#4"]  # both curves, named in the legend
        assert screen.query_one("#compare-lr", OverlayChart)._labels.count("#4") == 1
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)
