"""The header's words for a study shared by several workers."""

from __future__ import annotations

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
