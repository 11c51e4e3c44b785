"""The header, the trials table and the footer: a shared study's workers, and what fits at 80 columns."""

from __future__ import annotations

import pytest

from tui_tuner.engine.snapshot import SweepSnapshot
from tui_tuner.ui.status_line import status_text


def _snap(**kw: object) -> SweepSnapshot:
    return SweepSnapshot(study_name="s", sampler="tpe", pruner="median", concurrency=2, n_trials=8, started_at=0,
                         elapsed=5, finished=False, **kw)  # type: ignore[arg-type]


def test_the_header_counts_live_workers_and_flags_lost_ones_not_stopped_ones():
    one = status_text(_snap(workers=({"id": "a", "alive": True, "phase": "running"},))).plain
    assert "workers" not in one  # a single box: nothing to say
    workers = ({"id": "a", "alive": True, "phase": "running"}, {"id": "b", "alive": False, "phase": "running"},
               {"id": "c", "alive": False, "phase": "stopped"})
    line = status_text(_snap(workers=workers)).plain.splitlines()[0]
    assert "workers 1 (1 lost)" in line  # b stopped beating; c stopped on purpose


@pytest.mark.anyio
async def test_the_table_names_each_trials_worker_once_the_study_has_several():
    from textual.app import App, ComposeResult

    from tui_tuner.engine.lifecycle import TrialState
    from tui_tuner.engine.snapshot import TrialSnapshot
    from tui_tuner.ui.trials_table import TrialsTable

    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield TrialsTable()

    def trial(n: int, worker: str) -> TrialSnapshot:
        return TrialSnapshot(number=n, state=TrialState.RUNNING, step=5, total_steps=10, params={}, overrides={},
                             user_attrs={"worker": worker}, version=1, device=f"cuda:{3 - n}")

    async with One().run_test(size=(200, 10)) as pilot:
        table = pilot.app.query_one(TrialsTable)
        table.show(_snap(trials=(trial(0, "boxa-1"),), workers=({"id": "boxa-1", "alive": True},)))
        assert "worker" not in table.columns  # one worker: the table a single box always had
        two = ({"id": "boxa-1", "alive": True}, {"id": "boxb-2", "alive": True})
        table.show(_snap(trials=(trial(0, "boxa-1"), trial(1, "boxb-2")), workers=two))
        assert [table.get_cell(str(n), "worker") for n in (0, 1)] == ["boxa-1", "boxb-2"]
        assert table.get_cell("0", "device") == "g3"  # each trial's GPU beside it (issue 11)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_help_and_quit_are_in_the_footer_at_80_columns():
    """A new user at 80x24 must see how to get help and how to leave (issue 14, defect 5)."""
    from textual.widgets._footer import FooterKey

    from tests.test_ui_snapshots import _app

    async with _app().run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        keys = {k.description: k.region for k in pilot.app.query(FooterKey)}
        for name in ("Help", "Quit", "Pause/resume", "Kill", "Fork"):
            assert name in keys and keys[name].right <= 80 and keys[name].width > 0, (name, keys.get(name))


@pytest.mark.anyio
async def test_tabs_show_their_keys_and_the_loss_title_follows_log_y():
    """Issue 14, defect 6 (in part): the 1-5 keys are on the tabs; `l` changes what the loss title says."""
    from textual.widgets import Tabs

    from tests.test_ui_snapshots import _app

    async with _app().run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        labels = [str(t.label) for t in pilot.app.query_one(Tabs).query("Tab")]
        # the charts' trial named (#0 selected)
        assert labels == ["1 Loss #0", "2 LR #0", "3 System", "4 Events", "5 Insight"]
        loss = pilot.app.query_one("#panel-loss")
        assert loss.border_title == "Loss #0 (l: log y)"
        await pilot.press("l")
        assert loss.border_title == "Loss #0, log y (l: linear)"
        await pilot.press("l")
        assert loss.border_title == "Loss #0 (l: log y)"
