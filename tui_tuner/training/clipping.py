"""Component-wise gradient clipping (Yang & Ma 2022): each part of the model's gradient clipped by its own norm."""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

Component = str  # "attention", "mlp", "embeddings" or "other"

# Name fragments, matched within one dotted part of a module's path (self_attn, c_attn, query_key_value).
# Embeddings are checked first: lm_head and embed_tokens sit outside the blocks whatever else they are called.
_KEYWORDS: tuple[tuple[Component, tuple[str, ...]], ...] = (
    ("embeddings", ("embed", "wte", "wpe", "lm_head")),
    ("attention", ("q_proj", "k_proj", "v_proj", "o_proj", "attn", "attention", "query", "key", "value")),
    ("mlp", ("mlp", "gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc")),
)
# An adapter's own tensors (q_proj.lora_A.default.weight, AdaLoRA's lora_E) belong to the module they adapt.
_ADAPTER_PART = re.compile(r"\.lora_\w+(\..*)?$")


def component_of(name: str) -> Component:
    """The component a parameter belongs to, from its name. The module path decides (GPT-2's c_proj is attention
    under .attn. and MLP under .mlp.); the parameter's own name (weight, bias) does not."""
    module = _ADAPTER_PART.sub("", name)
    # The adapter's suffix takes the parameter's own name with it; otherwise that is the last part.
    parts = module.split(".") if module != name else name.split(".")[:-1]
    # A norm layer is no projection: Llama's post_attention_layernorm is "other", not attention.
    parts = [part for part in parts if "norm" not in part]
    for component, keys in _KEYWORDS:
        if any(k in part for part in parts for k in keys):
            return component
    return "other"


def component_groups(named: Iterable[tuple[str, torch.nn.Parameter]]) -> dict[Component, list[torch.nn.Parameter]]:
    """The trainable parameters by component; components without any are left out."""
    groups: dict[Component, list[torch.nn.Parameter]] = {}
    for name, p in named:
        if p.requires_grad:
            groups.setdefault(component_of(name), []).append(p)
    return groups


def clip_by_component(groups: dict[Component, list[torch.nn.Parameter]], max_norm: float) -> None:
    """Scale each component's gradient down to total norm `max_norm` (those already within it keep theirs)."""
    for params in groups.values():
        torch.nn.utils.clip_grad_norm_(params, max_norm)
