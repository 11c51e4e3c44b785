"""Counts in the status line and the headless table: every state named, the rare ones only when present."""

from __future__ import annotations

from tests.test_ui_snapshots import TRIALS, FakeSweep
from tui_tuner.engine.snapshot import STATES
from tui_tuner.report import progress_table
from tui_tuner.state_words import COUNT_WORDS, count_words
from tui_tuner.ui.status_line import status_text


def _counts(**nonzero: int) -> dict[str, int]:
    return {str(s): nonzero.get(str(s), 0) for s in STATES}


def test_every_state_is_counted_under_exactly_one_word() -> None:
    counted = [s for _, states, _ in COUNT_WORDS for s in states]
    assert sorted(counted) == sorted(str(s) for s in STATES)


def test_rare_states_show_only_when_present() -> None:
    assert [w for w, _ in count_words(_counts())] == ["done", "run", "queued", "failed"]
    words = dict(count_words(_counts(interrupted=2, killed=1, starting=1, running=1)))
    assert words["interrupted"] == 2 and words["killed"] == 1 and words["run"] == 2 and "cancelled" not in words


def test_status_line_and_headless_name_interrupted_and_killed() -> None:
    snap = FakeSweep().snapshot()
    snap = type(snap)(**{**snap.__dict__, "counts": _counts(interrupted=2, killed=1, failed=1, complete=3)})
    line = status_text(snap).plain
    assert "interrupted 2" in line and "killed 1" in line and "failed 1" in line and "done 3" in line
    assert max(len(x.rstrip()) for x in line.splitlines()) <= 80
    head = progress_table(snap).splitlines()[0]
    assert "interrupted 2" in head and "killed 1" in head and "failed 1" in head


def test_status_line_says_what_is_loading() -> None:
    snap = FakeSweep().snapshot()
    loading = type(snap)(**{**snap.__dict__, "trials": (), "phase": "loading", "loading": "loading model m…"})
    text = status_text(loading, "my-preset").plain
    assert "snap" in text and "preset my-preset" in text and "loading model m…" in text
    assert len(TRIALS) and "done" not in text


def test_end_reason_says_why_a_trial_stopped_short_and_in_full() -> None:
    from tui_tuner.state_words import end_reason

    cases = {
        ("pruned", (("pruned_at_step", 300), ("pruned_reason", "pruned at step 300 by median"))): "pruner",
        ("killed", (("stopped_by_user", True), ("stopped_at_step", 40))): "user",
        ("failed", (("error", "out of memory at step 3 (batch_size=8, grad_accum=1): lower batch_size"),)): "OOM",
        ("failed", (("error", "Diverged: train loss is nan at step 9 (lr=1.0e-2): diverged"),)): "diverged",
        ("failed", (("error", "RuntimeError: boom"),)): "error",
        ("complete", (("early_stopped_at_step", 80), ("early_stop_reason", "no eval improvement"))): "patience",
        ("pruned", (("pbt_replaced_by", 7), ("pruned_reason", "PBT: bottom of 4"))): "PBT→#7",
        ("pruned", (("pruned_reason", "not promoted: rank 3 of 4 at step 100 (eval 1.250)"),)): "not top-k",
        ("cancelled", (("cancelled_by_user", True),)): "user",
        ("interrupted", (("interrupted_at_step", 60),)): "stop",
    }
    for (state, attrs), short in cases.items():
        got, full = end_reason(state, dict(attrs))
        assert got == short and full, (state, attrs, got)
    assert end_reason("killed", {"stopped_at_step": 40})[1] == "killed by the user at step 40"
    assert end_reason("pruned", {"pruned_reason": "pruned at step 300 by median"})[1] == "pruned at step 300 by median"
    # Not ended (a resumed trial may still carry an earlier interruption's attrs), or ran its full budget: nothing.
    assert end_reason("running", {"interrupted_at_step": 60}) == ("", "")
    assert end_reason("complete", {}) == ("", "")
