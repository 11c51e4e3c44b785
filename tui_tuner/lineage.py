"""A sweep's lineage as a tree: who forked or cloned whom, at which step, with which change (UI-free: the app's
lineage screen and `tui-tuner lineage` print it)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tui_tuner.engine.snapshot import TrialSnapshot
from tui_tuner.format import fmt_loss, fmt_value
from tui_tuner.state_words import state_word


@dataclass
class Node:
    trial: TrialSnapshot
    children: list[Node] = field(default_factory=list)

    @property
    def label(self) -> str:
        return node_label(self.trial)


def lineage(trials: Iterable[TrialSnapshot]) -> list[Node]:
    """Roots (trials with no parent in the sweep), each with its forks and clones below it by fork step."""
    nodes = {t.number: Node(t) for t in trials}
    roots = []
    for node in nodes.values():
        parent = nodes.get(node.trial.parent) if node.trial.parent is not None else None
        (parent.children if parent is not None else roots).append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: (n.trial.fork_step or 0, n.trial.number))
    return sorted(roots, key=lambda n: n.trial.number)


def node_label(t: TrialSnapshot) -> str:
    """`#7 complete 1.906 · clone @200 for #5: learning_rate 0.00275→0.0033`: state, best eval, how it began."""
    out = f"#{t.number} {state_word(t.state, t.user_attrs)} {fmt_loss(t.best_eval_loss)}"
    if t.parent is None:
        return out
    a = t.user_attrs
    if t.origin == "pbt":
        changes = a.get("pbt_changes") or {}
        change = ", ".join(f"{k} {_short(v[0])}→{_short(v[1])}" for k, v in changes.items()) or "no change"
        return f"{out} · clone @{t.fork_step} for #{a.get('pbt_replaces')}: {change}"
    edits = ", ".join(f"{k}={fmt_value(v)}" for k, v in {**t.params, **t.overrides}.items()
                      if k in t.overrides) if t.overrides else ""
    return f"{out} · fork @{t.fork_step}" + (f": {edits}" if edits else "")


def _short(v: object) -> str:
    """3 significant digits: a tree line must fit 80 columns (the events keep the full values)."""
    return f"{v:.3g}" if isinstance(v, float) else fmt_value(v)


def render(roots: list[Node]) -> list[str]:
    """The tree as text lines (├─ └─), for headless output."""
    lines: list[str] = []

    def walk(node: Node, prefix: str, last: bool, top: bool) -> None:
        lines.append(node.label if top else f"{prefix}{'└─ ' if last else '├─ '}{node.label}")
        inner = prefix if top else prefix + ("   " if last else "│  ")
        for i, child in enumerate(node.children):
            walk(child, inner, i == len(node.children) - 1, False)

    for root in roots:
        walk(root, "", True, True)
    return lines


def ancestry(trials: Iterable[TrialSnapshot], number: int) -> list[TrialSnapshot]:
    """Trial `number` and the trials its weights came from, oldest first (a PBT winner's whole chain)."""
    by_number = {t.number: t for t in trials}
    chain: list[TrialSnapshot] = []
    t = by_number.get(number)
    while t is not None and t not in chain:
        chain.append(t)
        t = by_number.get(t.parent) if t.parent is not None else None
    return chain[::-1]


def segments(chain: list[TrialSnapshot], keys: tuple[str, ...] = ("learning_rate",)) -> str:
    """The steps each trial of a chain trained and its values of `keys`: `0-50 #2 lr=0.003 · 50-200 #5 ...`,
    which for PBT is the schedule it found."""
    out = []
    for i, t in enumerate(chain):
        start = (t.fork_step or 0) if i else 0
        end = chain[i + 1].fork_step if i + 1 < len(chain) else t.step
        values = {**t.params, **t.overrides}
        shown = " ".join(f"{k}={fmt_value(values[k])}" for k in keys if k in values)
        out.append(f"{start}-{end} #{t.number}" + (f" {shown}" if shown else ""))
    return " · ".join(out)
