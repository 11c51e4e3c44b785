"""tui-tuner: live terminal control of Optuna sweeps of LLM fine-tunes."""

from __future__ import annotations

from typing import Any

__all__ = ["Preset", "PresetError", "Sweep", "SweepError"]
__version__ = "0.1.0"

_HOMES = {"Sweep": "tui_tuner.engine.sweep", "SweepError": "tui_tuner.engine.sweep",
          "Preset": "tui_tuner.preset", "PresetError": "tui_tuner.preset"}


def __getattr__(name: str) -> Any:
    # Lazy: `tui-tuner --help` and the app's first paint must not wait for torch, transformers and peft.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'tui_tuner' has no attribute {name!r}")
