"""The search-efficiency task: the tiny Llama + LoRA on builtin:markov, its search space and eval definition."""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import torch

from tui_tuner.preset import Preset

# Every arm trains the same model on the same data for MAX_STEPS steps and is scored by the same eval: the mean
# completion-token loss over the whole eval split (800 walks: eval_batches unset), every EVAL_INTERVAL steps.
MAX_STEPS = 300
EVAL_INTERVAL = 50

SEARCH: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
    "warmup_steps": {"type": "int", "low": 0, "high": 60, "step": 10},
}

TASK: dict[str, Any] = {
    "name": "search-efficiency",
    "model": {"name": "builtin:tiny-llama", "method": "lora"},
    "data": {"train": "builtin:markov", "max_length": 32, "eval_fraction": 0.2},
    "params": {"learning_rate": 3e-3, "batch_size": 16, "max_steps": MAX_STEPS, "warmup_steps": 20,
               "schedule": "cosine", "lora_r": 8, "lora_alpha": 16, "eval_interval": EVAL_INTERVAL, "seed": 0},
    "search": SEARCH,
    "study": {"sampler": "tpe", "pruner": "none", "n_trials": 8, "concurrency": 2},
    "checkpoints": {"interval": None, "keep_best": False},  # checkpoints cost time and change nothing here
    "device": {"type": "cpu"},
    "alerts": {"bell": False},
}


def task_dict(**sections: dict[str, Any]) -> dict[str, Any]:
    """TASK with some sections' keys replaced; `search` is replaced whole."""
    out = copy.deepcopy(TASK)
    for key, value in sections.items():
        out[key] = value if key == "search" else {**out.get(key, {}), **value}
    return out


def task_preset(**sections: dict[str, Any]) -> Preset:
    return Preset.from_dict(task_dict(**sections))


def sample_config(rng: random.Random) -> dict[str, Any]:
    """One point of SEARCH drawn uniformly (log-uniformly for a log range)."""
    out: dict[str, Any] = {}
    for name, d in SEARCH.items():
        if d["type"] == "int":
            out[name] = rng.randrange(d["low"], d["high"] + 1, d.get("step", 1))
        elif d.get("log"):
            out[name] = math.exp(rng.uniform(math.log(d["low"]), math.log(d["high"])))
        else:
            out[name] = rng.uniform(d["low"], d["high"])
    return out


def final_eval_loss(preset: Preset, data: Any, values: dict[str, Any]) -> float:
    """One trial of `values` trained outside the engine (the same FineTune the engine runs), its last eval."""
    from tui_tuner.training.finetune import FineTune

    torch.set_num_threads(1)  # as the engine's trials do
    ft = FineTune(preset.model.name, preset.model.method, preset.params.model_copy(update=values), data, device="cpu")
    try:
        while not ft.done:
            ft.step()
        return ft.evaluate()
    finally:
        ft.close()
