"""The lineage tree: built from snapshots (forks and PBT clones under their parents), printed, and shown by the
app's lineage screen (t), whose enter selects the trial in the table."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.test_ui_snapshots import TRIALS, FakeSweep
from tui_tuner.engine.snapshot import TrialSnapshot
from tui_tuner.lineage import ancestry, lineage, render, segments


def _t(n: int, state: str, step: int, lr: float, parent: int | None = None, fork_step: int | None = None,
       origin: str = "sampler", **attrs: Any) -> TrialSnapshot:
    return TrialSnapshot(number=n, state=state, step=step, total_steps=300, params={"learning_rate": lr},
                         overrides={}, best_eval_loss=1.0 + n / 10, parent=parent, fork_step=fork_step,
                         origin=origin, user_attrs=attrs)


PBT = [
    _t(0, "complete", 300, 3e-3), _t(1, "pruned", 100, 1e-4, pbt_replaced_by=2),
    _t(2, "pruned", 200, 3.6e-3, parent=0, fork_step=100, origin="pbt", pbt_replaces=1,
       pbt_changes={"learning_rate": [3e-3, 3.6e-3]}, pbt_replaced_by=3),
    _t(3, "complete", 300, 2.88e-3, parent=2, fork_step=200, origin="pbt", pbt_replaces=2,
       pbt_changes={"learning_rate": [3.6e-3, 2.88e-3]}),
]


def test_clones_hang_under_their_donors_with_what_changed() -> None:
    roots = lineage(PBT)
    assert [r.trial.number for r in roots] == [0, 1]
    assert [c.trial.number for c in roots[0].children] == [2] and roots[0].children[0].children[0].trial.number == 3
    lines = render(roots)
    assert lines[0] == "#0 complete 1.000"
    assert lines[1] == "└─ #2 pruned 1.200 · clone @100 for #1: learning_rate 0.003→0.0036"
    assert lines[2] == "   └─ #3 complete 1.300 · clone @200 for #2: learning_rate 0.0036→0.00288"
    assert lines[3] == "#1 pruned 1.100"


def test_the_winners_chain_is_the_schedule_pbt_found() -> None:
    chain = ancestry(PBT, 3)
    assert [t.number for t in chain] == [0, 2, 3]
    assert segments(chain) == ("0-100 #0 learning_rate=0.003 · 100-200 #2 learning_rate=0.0036 · "
                               "200-300 #3 learning_rate=0.00288")


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_t_opens_the_lineage_and_enter_selects_a_trial() -> None:
    from textual.widgets import Tree

    from tui_tuner.ui.app import TuiTunerApp
    from tui_tuner.ui.lineage_screen import LineageScreen
    from tui_tuner.ui.trials_table import TrialsTable

    app = TuiTunerApp(FakeSweep(), live=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("t")
        await pilot.pause()
        assert isinstance(app.screen, LineageScreen)
        tree = app.screen.query_one(Tree)
        labels = [str(n.label) for n in tree.root.children]
        assert len(labels) == len([t for t in TRIALS if t.parent is None])  # the fork sits under its parent
        fork_parent = next(n for n in tree.root.children if n.data == 1)
        assert [c.data for c in fork_parent.children] == [4] and "fork @400" in str(fork_parent.children[0].label)
        tree.move_cursor(fork_parent.children[0])
        await pilot.press("enter")
        for _ in range(20):
            if not isinstance(app.screen, LineageScreen):
                break
            await asyncio.sleep(0.05)
        assert not isinstance(app.screen, LineageScreen) and app.query_one(TrialsTable).selected == 4
