"""The lineage screen: the sweep's forks and PBT clones as a tree; enter selects a trial in the table."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import Footer, Static, Tree

from tui_tuner.lineage import Node, lineage
from tui_tuner.ui.source import SweepSource


class LineageScreen(Screen[int | None]):
    """Rebuilt once a second when any trial changed; dismisses with the chosen trial's number (None: escape)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,t,q", "dismiss(None)", "Back", id="lineage.back")]

    def __init__(self, source: SweepSource) -> None:
        super().__init__()
        self.source = source
        self._versions: tuple[tuple[int, int], ...] = ()

    def compose(self) -> ComposeResult:
        yield Static("Lineage: forks and PBT clones under the trial they started from (enter: select it)",
                     id="lineage-title")
        tree: Tree[int] = Tree("sweep", id="lineage")
        tree.show_root = False
        yield tree
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()
        self.set_interval(1.0, self.redraw)
        self.query_one(Tree).focus()

    def redraw(self) -> None:
        trials = self.source.snapshot().trials
        versions = tuple((t.number, t.version) for t in trials)
        if versions == self._versions:
            return
        self._versions = versions
        tree: Tree[int] = self.query_one(Tree)
        cursor = tree.cursor_node.data if tree.cursor_node is not None else None
        tree.clear()

        def add(parent: object, node: Node) -> None:
            branch = parent.add(node.label, data=node.trial.number, expand=True,  # type: ignore[attr-defined]
                                allow_expand=bool(node.children))
            for child in node.children:
                add(branch, child)

        for root in lineage(trials):
            add(tree.root, root)
        if cursor is not None:
            line = next((n.line for n in _walk(tree.root) if n.data == cursor), None)
            if line is not None and line >= 0:
                tree.cursor_line = line

    def on_tree_node_selected(self, event: Tree.NodeSelected[int]) -> None:
        if event.node.data is not None:
            self.dismiss(event.node.data)


def _walk(node: object) -> list:  # type: ignore[type-arg]
    out = [node]
    for child in node.children:  # type: ignore[attr-defined]
        out.extend(_walk(child))
    return out
