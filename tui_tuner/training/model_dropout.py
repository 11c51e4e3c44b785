"""The base model's dropout params: which config keys and modules each one sets, per architecture."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tui_tuner.params import TrialParams
from tui_tuner.training.errors import ModelError


@dataclass(frozen=True)
class DropoutKind:
    config_keys: tuple[str, ...]  # the names architectures give it in their config
    modules: tuple[str, ...]  # nn.Dropout modules built from it, by the end of their name (GPT-2's)


# The one table. Modules that read the config key as a float attribute of their own (Llama's attention reads
# self.attention_dropout on each forward) are found by the key itself; nn.Dropout modules by name.
DROPOUTS: dict[str, DropoutKind] = {
    "attention_dropout": DropoutKind(("attention_dropout", "attn_pdrop", "attention_probs_dropout_prob"),
                                     ("attn_dropout",)),
    "hidden_dropout": DropoutKind(("hidden_dropout", "resid_pdrop", "hidden_dropout_prob"),
                                  ("resid_dropout", "mlp.dropout")),
    "embedding_dropout": DropoutKind(("embd_pdrop", "embed_dropout", "embedding_dropout"),
                                     ("transformer.drop", "embed_dropout")),
}


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config  # multimodal: the decoder's


def config_overrides(config: Any, values: Mapping[str, float | None]) -> dict[str, float]:
    """{config key: value} for the dropout params set in `values`; a param the architecture has no key for is a
    one-line ModelError naming the param and the model type."""
    text = _text_config(config)
    out: dict[str, float] = {}
    for param, value in values.items():
        if value is None:
            continue
        keys = [k for k in DROPOUTS[param].config_keys if hasattr(text, k)]
        if not keys:
            kind = param.replace("_", " ")
            raise ModelError(f"{param}: {text.model_type} has no {kind} (its config has none of "
                             f"{', '.join(DROPOUTS[param].config_keys)})")
        out.update(dict.fromkeys(keys, value))
    return out


def param_values(params: TrialParams) -> dict[str, float | None]:
    return {name: getattr(params, name) for name in DROPOUTS}


def set_in_config(config: Any, params: TrialParams) -> None:
    """Write the trial's dropout into a config before the model is built from it."""
    text = _text_config(config)
    for key, value in config_overrides(config, param_values(params)).items():
        setattr(text, key, value)


def apply_to_model(model: torch.nn.Module, params: TrialParams) -> None:
    """Change a built model's dropout in place (a fork's new values): its config, the modules that keep the value
    as an attribute of the config key's name, and the nn.Dropout modules named for it."""
    values = param_values(params)
    overrides = config_overrides(model.config, values)
    set_in_config(model.config, params)
    for name, mod in model.named_modules():
        for key, value in overrides.items():
            if isinstance(getattr(mod, key, None), float):
                setattr(mod, key, value)
        if isinstance(mod, torch.nn.Dropout):
            for param, value in values.items():
                if value is not None and _named(name, DROPOUTS[param].modules):
                    mod.p = value


def _named(name: str, suffixes: Iterable[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)
