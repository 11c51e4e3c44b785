"""The package's shape: no import cycles between its modules."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "tui_tuner"


def _module_name(f: Path) -> str:
    name = ".".join(f.relative_to(ROOT.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(f: Path, known: set[str]) -> set[str]:
    """Every tui_tuner module `f` imports, at the top or inside a function (a lazy import is still a dependency),
    except under `if TYPE_CHECKING:`."""
    out: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            out.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)

    Visitor().visit(ast.parse(f.read_text()))
    return {m for m in out if m in known and m != "tui_tuner"}


def test_no_import_cycles():
    files = {_module_name(f): f for f in ROOT.rglob("*.py")}
    graph = {m: _imports(f, set(files)) for m, f in files.items()}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str], done: set[str]) -> None:
        for d in sorted(graph[m]):
            if d in path:
                cycles.append([*path[path.index(d):], d])
            elif d not in done:
                visit(d, [*path, d], done)
        done.add(m)

    done: set[str] = set()
    for m in sorted(graph):
        visit(m, [m], done)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_a_cycle(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import tui_tuner.b\n")
    b.write_text("def f():\n    from tui_tuner.a import x\n")
    known = {"tui_tuner.a", "tui_tuner.b"}
    assert _imports(a, known) == {"tui_tuner.b"} and _imports(b, known) == {"tui_tuner.a"}


def test_layers_point_one_way():
    """engine and training know no client; the API knows the engine, never the app; the app may use the API."""
    modules = {_module_name(f): f for f in ROOT.rglob("*.py")}
    known = set(modules)
    rules = {"tui_tuner.engine": ("tui_tuner.api", "tui_tuner.ui", "tui_tuner.cli", "tui_tuner.ctl"),
             "tui_tuner.training": ("tui_tuner.api", "tui_tuner.ui", "tui_tuner.engine"),
             "tui_tuner.api": ("tui_tuner.ui", "tui_tuner.cli", "tui_tuner.ctl")}
    bad = [f"{name} imports {dep}" for name, f in modules.items() for layer, banned in rules.items()
           if name.startswith(layer) for dep in _imports(f, known) if dep.startswith(banned)]
    assert not bad, "; ".join(bad)
