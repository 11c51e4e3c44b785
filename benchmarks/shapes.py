"""Models for the GPU benchmarks, built from a config (no download): SmolLM2-135M's shape, random weights."""

from __future__ import annotations

from pathlib import Path

import torch


def smollm2_135m_dir(root: Path) -> Path:
    """SmolLM2-135M's architecture (30 layers, hidden 576, 9 heads / 3 KV heads, vocab 49152, tied embeddings),
    saved with a byte-level tokenizer; the weights are random, which is all a memory and speed test needs."""
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    target = root / "smollm2-135m-shaped"
    if (target / "config.json").is_file():
        return target
    tok = ByT5Tokenizer()
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      rope_theta=100000.0, tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(target)
    tok.save_pretrained(target)
    return target


def needs_cuda(script: str) -> bool:
    """True when CUDA is there; else says in one line what the script needs."""
    if torch.cuda.is_available():
        return True
    print(f"{script} needs CUDA (torch.cuda.is_available() is False on this machine): run it on a GPU box")
    return False
