"""tui-tuner: live terminal control of Optuna sweeps of LLM fine-tunes."""

from tui_tuner.engine.sweep import Sweep, SweepError
from tui_tuner.preset import Preset, PresetError

__all__ = ["Preset", "PresetError", "Sweep", "SweepError"]
__version__ = "0.1.0"
