"""Fast start: `import tui_tuner` and the CLI module pull in no torch, transformers, peft (nor optuna, pydantic)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "optuna", "pydantic", "textual")


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys; print('LOADED:', *(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0, r.stderr
    return r.stdout.rsplit("LOADED:", 1)[1].split()


HELP = "import contextlib; from tui_tuner.cli import main\nwith contextlib.suppress(SystemExit): main(['--help'])"


@pytest.mark.parametrize("code", ["import tui_tuner", "import tui_tuner.cli", HELP])
def test_no_heavy_import_on_the_help_path(code: str) -> None:
    assert _loaded_after(code) == []


def test_lazy_names_still_resolve() -> None:
    import tui_tuner

    assert tui_tuner.Sweep.__name__ == "Sweep" and issubclass(tui_tuner.PresetError, ValueError)
    with pytest.raises(AttributeError):
        tui_tuner.NoSuchThing  # noqa: B018
