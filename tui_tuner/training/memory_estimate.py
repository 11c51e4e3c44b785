"""A conservative GPU memory estimate for one trial, from the model's config alone (a meta-device model: no
weights are read or allocated): weights, gradients and optimizer state of the trainable ones, activations, logits."""

from __future__ import annotations

import functools

import torch

from tui_tuner.params import TrialParams
from tui_tuner.training.model import _quiet_transformers, adapter_config, freeze_layers, resolve_model_path
from tui_tuner.training.optimizers import state_copies

CUDA_CONTEXT = 600 << 20  # the CUDA context and cuBLAS workspaces a trial's thread may add
FRAGMENTATION = 1.2  # the caching allocator keeps freed blocks it cannot reuse for other sizes


@functools.lru_cache(maxsize=64)
def _counts(name: str, method: str, lora_r: int, targets: str, freeze: int, trust: bool) -> tuple[int, int, dict]:
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    _quiet_transformers()
    cfg = AutoConfig.from_pretrained(resolve_model_path(name), trust_remote_code=trust)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust)
        if method in ("lora", "adalora"):
            params = TrialParams(max_steps=100, lora_r=lora_r, lora_target_modules=targets)
            model = get_peft_model(model, adapter_config(method, params, 100))
        else:
            freeze_layers(model, freeze)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    shape = {"hidden": text.hidden_size, "layers": text.num_hidden_layers, "vocab": text.vocab_size,
             "inter": getattr(text, "intermediate_size", 4 * text.hidden_size),
             "heads": text.num_attention_heads}
    return total, trainable, shape


def estimate_bytes(name: str, method: str, params: TrialParams, seq_len: int, micro_batch: int,
                   trust_remote_code: bool = False) -> int:
    """Bytes one trial is expected to peak at on its GPU. Weights are fp32 (as from_pretrained loads them);
    activations are counted at 4 bytes too, which overstates bf16 autocast: an estimate must not undercount."""
    total, trainable, s = _counts(name, method, params.lora_r, params.lora_target_modules, params.freeze_layers,
                                  trust_remote_code)
    tokens = micro_batch * seq_len
    weights = 4 * total
    grads_and_state = 4 * trainable * (1 + state_copies(params))  # the gradient and the optimizer's state
    # Per layer and token: the saved inputs of attention and MLP projections (~ 10 hidden + 3 intermediate
    # values), plus the attention scores when the kernel materialises them.
    per_layer = tokens * (10 * s["hidden"] + 3 * s["inter"]) * 4 + micro_batch * s["heads"] * seq_len**2 * 4
    logits = tokens * s["vocab"] * 4 * 3  # logits, their float copy for the loss, and its gradient
    return round((weights + grads_and_state + s["layers"] * per_layer + logits) * FRAGMENTATION) + CUDA_CONTEXT
