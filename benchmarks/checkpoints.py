"""Checkpoint save / load time and size: the demo model's LoRA adapter and a LoRA on a ~300M-parameter Llama
built from a config (random init, loaded through from_pretrained like any other model).

    python benchmarks/checkpoints.py [--skip-large] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui_tuner.params import TrialParams
from tui_tuner.preset import DataSection
from tui_tuner.training import checkpoint as ckpt
from tui_tuner.training.finetune import DataBundle, FineTune, prepare_data
from tui_tuner.training.model import load_tokenizer


def build_large(root: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=384, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=256,
                      pad_token_id=0, eos_token_id=1, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(root)
    load_tokenizer("builtin:tiny-llama").save_pretrained(root)
    return root


def measure(name: str, model: str, data: DataBundle, device: str, reps: int = 3) -> None:
    p = TrialParams(max_steps=10, batch_size=4, learning_rate=1e-3, lora_r=16, lora_alpha=32)
    ft = FineTune(model, "lora", p, data, device=device)
    ft.step()  # optimizer state exists, as in a real checkpoint
    n_params = sum(x.numel() for x in ft.model.parameters())
    saves, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(reps):
            t0 = time.perf_counter()
            info = ckpt.save(ft, Path(tmp))
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ckpt.restore(ft, info.path)
            loads.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in info.path.iterdir())
        adapter = (info.path / "adapter_model.safetensors").stat().st_size
    print(f"{name}: {n_params / 1e6:.1f}M params, LoRA r=16 all-linear on {device}: checkpoint {size / 2**20:.2f} MiB "
          f"(adapter {adapter / 2**20:.2f} MiB); save median {statistics.median(saves) * 1e3:.0f} ms, "
          f"load median {statistics.median(loads) * 1e3:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(2)
    _, data = prepare_data("builtin:tiny-llama", DataSection(train="builtin:progressions", max_length=48))
    measure("demo model", "builtin:tiny-llama", data, args.device)
    if not args.skip_large:
        with tempfile.TemporaryDirectory() as tmp:
            measure("large model", str(build_large(Path(tmp))), data, args.device)


if __name__ == "__main__":
    main()
