"""The header's text (issue 14, defect 8) in each state, at 80 columns: the budget apart from the user's trials,
the best so far (running or completed), the ETA, and why more trials run than the concurrency."""

from __future__ import annotations

from typing import Any

from tests.test_eta import sweep, trial
from tui_tuner.engine.snapshot import STATES
from tui_tuner.sweep_words import best_words, budget_words, slot_words
from tui_tuner.ui.status_line import status_text


def snap(*trials: Any, **kw: Any) -> Any:
    counts = {str(s): sum(t.state == s for t in trials) for s in STATES}
    return sweep(*trials, counts=counts, **kw)


def lines(s: Any) -> list[str]:
    out = status_text(s, width=80).plain.split("\n")
    assert len(out) == 2 and all(len(line) <= 80 for line in out), out
    return out


def test_budget_counts_sampler_trials_apart_from_the_users_and_pbt() -> None:
    s = snap(trial(0, "complete", origin="sampler"), trial(1, "running", origin="sampler"),
             trial(2, "running", origin="fork"), trial(3, "waiting", origin="enqueue"),
             trial(4, "cancelled", origin="enqueue"), trial(5, "running", origin="pbt"), n_trials=16)
    assert budget_words(s) == "sampler 2/16 +2 yours +1 pbt"
    assert budget_words(snap(trial(0, "running"), n_trials=4)) == "sampler 1/4"
    assert lines(s)[1].startswith(" sampler 2/16 +2 yours +1 pbt  run 3/conc 2")


def test_best_is_a_running_trials_eval_until_a_completed_one_is_lower() -> None:
    assert best_words(snap(trial(0, "running"))) == "best -"
    running = snap(trial(0, "running", best_eval_loss=0.86171), trial(1, "pruned", best_eval_loss=0.5))
    assert best_words(running) == "best 0.8617 (#0, running)"  # a pruned trial's report is not a best
    both = snap(trial(0, "complete", eval_loss=0.9), trial(3, "running", best_eval_loss=0.8617),
                best_trial=0, best_value=0.9)
    assert best_words(both) == "best 0.8617 (#3, running)" and "best 0.8617 (#3, running)" in lines(both)[0]
    done = snap(trial(0, "complete", eval_loss=0.8), trial(3, "paused", best_eval_loss=0.85), best_trial=0,
                best_value=0.8)
    assert best_words(done) == "best 0.8000 (#0)"


def test_eta_in_the_header_while_running_and_dash_when_unknown() -> None:
    moving = snap(trial(0, "running", step=40, steps_per_s=2.0), n_trials=1)
    assert "eta 30s" in lines(moving)[0]
    assert "eta -" in lines(snap(trial(0, "running", step=40), n_trials=1))[0]
    assert "eta" not in lines(snap(trial(0, "complete"), n_trials=1, phase="finished"))[0]


def test_why_more_run_than_the_concurrency() -> None:
    three = [trial(n, "running") for n in range(3)]
    assert slot_words(snap(*three, concurrency=3, slots_used=3)) == ("run 3/conc 3", "")
    lowered = snap(*three, concurrency=1, slots_used=3)
    assert slot_words(lowered) == ("run 3/conc 1", "lowered: trials finish")
    assert "run 3/conc 1  (lowered: trials finish)" in lines(lowered)[1]
    # a remote client of an older engine is not told the slots: the counts alone still show it
    assert slot_words(snap(*three, concurrency=1))[1] == "lowered: trials finish"
    shared = snap(*three, concurrency=1, slots_used=1, workers=({"alive": True}, {"alive": True}))
    assert slot_words(shared)[1] == "conc is per worker"
    paused = [trial(3, "paused"), trial(4, "paused")]
    frees = snap(trial(0, "running"), *paused, concurrency=1, slots_used=1)
    assert slot_words(frees) == ("run 1/conc 1", "paused free slots")
    holds = snap(trial(0, "running"), *paused, concurrency=3, slots_used=3, n_trials=9)
    assert slot_words(holds) == ("run 1/conc 3", "paused hold slots")  # and a trial is waiting for a slot
    spent = snap(trial(0, "running"), *paused, concurrency=3, slots_used=3, n_trials=3)
    assert slot_words(spent)[1] == ""  # nothing would start anyway


def test_a_crowded_header_drops_the_least_needed_words_first() -> None:
    s = snap(*(trial(n, st, best_eval_loss=1.0 + n) for n, st in enumerate(
        ("complete", "running", "running", "paused", "waiting", "pruned", "killed", "failed", "interrupted"))),
        study_name="a-rather-long-study-name", concurrency=1, slots_used=3, n_trials=16, best_trial=0,
        best_value=1.0)
    head, counts = lines(s)
    assert head.startswith(" a-rather-long-study-name ") and "best 1.000 (#0)" in head
    assert "sampler 9/16" in counts and "run 2/conc 1  (lowered: trials finish)" in counts
    assert "failed 1" in counts and "done 1" in counts  # outlast pruned, killed... (and failed outlasts queued)
