"""The models a preset can train: each must load, share model.name's vocabulary, and have the dropout it is given."""

from __future__ import annotations

from typing import Any

from tui_tuner.preset import Preset, PresetError
from tui_tuner.training.model import ModelError, load_config, load_tokenizer, model_context
from tui_tuner.training.model_dropout import DROPOUTS, config_overrides


def check_vocabulary(name: str, base: str, base_tokenizer: Any, trust_remote_code: bool = False) -> None:
    """The data is tokenized once, with model.name's (`base`) tokenizer: another model must read the same ids."""
    if name == base:
        return
    if load_tokenizer(name, trust_remote_code).get_vocab() != base_tokenizer.get_vocab():
        raise ModelError(f"model_name {name!r}: its tokenizer's vocabulary differs from that of model.name {base!r}, "
                         "which tokenizes the data: search over sizes of one model family")


def check_models(preset: Preset, base_tokenizer: Any) -> None:
    """Before anything trains: every model a trial can get resolves, reads model.name's token ids, and has each
    dropout param the preset fixes or searches (one-line ModelError otherwise)."""
    trust = preset.model.trust_remote_code
    # One value per dropout param is enough to ask whether the architecture has it.
    dropout = {p: v for p in DROPOUTS for v in preset.param_values(p) if v is not None}
    for name in preset.model_names():
        check_vocabulary(name, preset.model.name, base_tokenizer, trust)
        context = model_context(name, trust)  # model.name's was checked as the data was tokenized
        if context and preset.data.max_length > context[1]:
            raise PresetError(f"data.max_length ({preset.data.max_length}) is above the context of model_name "
                              f"{name} ({context[0]} = {context[1]} in its config)")
        try:
            config_overrides(load_config(name, trust), dropout)
        except ModelError as e:
            raise ModelError(f"{e} [model {name}]" if name != preset.model.name else str(e)) from None
