"""The trial-count words both clients print (status line, headless table): one vocabulary, one order."""

from __future__ import annotations

from collections.abc import Mapping

# (label, states counted, always shown): the ones people watch for always, so the line does not jump about;
# the others only when some trial is in them, so the counts fit 80 columns. "run" includes trials still
# starting: a start lasts a moment, and the table names each one.
COUNT_WORDS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("done", ("complete",), True),
    ("run", ("running", "starting"), True),
    ("paused", ("paused",), False),
    ("queued", ("waiting",), True),
    ("interrupted", ("interrupted",), False),
    ("parked", ("parked",), False),
    ("pruned", ("pruned",), False),
    ("killed", ("killed",), False),
    ("failed", ("failed",), True),
    ("cancelled", ("cancelled",), False),
)
ALARMING = frozenset({"failed"})  # counts drawn in red when non-zero


def count_words(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """(label, count) in display order: the always-shown ones, and the others that are non-zero."""
    out = []
    for label, states, always in COUNT_WORDS:
        n = sum(counts.get(s, 0) for s in states)
        if always or n:
            out.append((label, n))
    return out


def lineage_words(origin: str, parent: int | None, fork_step: int | None, attrs: Mapping[str, object]) -> str:
    """Where a trial came from, in words ("" for the sampler's and the user's new trials): a user's fork, or a
    PBT clone and the member it replaced."""
    if parent is None:
        return ""
    if origin == "pbt":
        return f"PBT clone of #{parent}@{fork_step}, replacing #{attrs.get('pbt_replaces')}"
    return f"fork of #{parent}@{fork_step}"


def state_word(state: str, user_attrs: Mapping[str, object]) -> str:
    """A trial's state as the tables print it: a COMPLETE trial that early stopping ended says so (it is
    complete to Optuna, but did not run its full budget)."""
    return "early stop" if state == "complete" and "early_stopped_at_step" in user_attrs else str(state)
