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


def _failure(error: str) -> str:
    low = error.lower()
    return "OOM" if "out of memory" in low else "diverged" if "diverged" in low else "error"


def end_reason(state: str, attrs: Mapping[str, object]) -> tuple[str, str]:
    """Why a trial stopped, from the user attrs the engine writes: (a word or two for the table, the full reason
    for the detail screen); ("", "") for a trial that has not ended, or ran its full budget. Only ended states
    are read: a resumed trial may carry the attrs of an earlier interruption."""
    at = attrs.get("stopped_at_step", attrs.get("pruned_at_step", attrs.get("failed_at_step")))
    step = f" at step {at}" if at is not None else ""
    reason = str(attrs.get("pruned_reason") or "")
    if state == "pruned" and attrs.get("pbt_replaced_by") is not None:
        return f"PBT→#{attrs['pbt_replaced_by']}", reason or f"replaced by PBT clone #{attrs['pbt_replaced_by']}"
    if state == "pruned" and reason.startswith("not promoted"):
        return "not top-k", reason
    if state == "pruned":
        return "pruner", reason or f"pruned{step}"
    if state == "killed":
        return "user", f"killed by the user{step}"
    if state == "failed":
        error = str(attrs.get("error") or "failed")
        return _failure(error), error
    if state == "cancelled":
        if attrs.get("cancelled_reason"):
            return "no ckpt", str(attrs["cancelled_reason"])
        return "user", "cancelled by the user before it ran"
    if state == "interrupted":
        return "stop", f"interrupted by a sweep stop at step {attrs.get('interrupted_at_step', '?')}: resume goes on"
    if state == "complete" and attrs.get("early_stop_reason"):
        return "patience", f"early stop at step {attrs.get('early_stopped_at_step', '?')}: {attrs['early_stop_reason']}"
    return "", ""


# The states the table's filter (h) hides: trials that ended without a result worth comparing, or not yet.
ENDED_EARLY = frozenset({"pruned", "failed", "killed", "cancelled", "interrupted"})
