"""Model and tokenizer loading through transformers' from_pretrained, LoRA via peft, the built-in tiny model."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from tui_tuner.format import first_line
from tui_tuner.params import TrialParams
from tui_tuner.preset import BUILTIN_MODEL
from tui_tuner.training.errors import ModelError

# peft's LoRA init and dropout layers draw from torch's global RNG: build one model at a time, seeded. Whatever
# else sets or reads that process-wide generator (a checkpoint's save and restore) takes this lock too, or it
# would reseed a model being built in another trial's thread.
RNG_LOCK = threading.Lock()


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # The hub client logs each network retry; the one-line ModelError says what failed instead.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def cache_dir() -> Path:
    return Path(os.environ.get("TUI_TUNER_CACHE", Path.home() / ".cache" / "tui-tuner"))


def builtin_model_dir() -> Path:
    """A ~130k-parameter Llama with a byte-level tokenizer, random init (seed 0), saved once with save_pretrained."""
    from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

    target = cache_dir() / "tiny-llama-v2"
    if (target / "config.json").is_file():
        return target
    _quiet_transformers()
    tok = ByT5Tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
        tie_word_embeddings=False, initializer_range=0.2,  # 0.02 leaves LoRA on a random model near-frozen
    )
    with RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tiny-llama-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str) -> str:
    return str(builtin_model_dir()) if name == BUILTIN_MODEL else name


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError, TypeError, hub validation errors...
        raise ModelError(f"cannot load tokenizer for {name!r}: {first_line(e)}{_offline_hint(name)}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


# Where configs keep the longest sequence the model takes (Llama/Qwen/most; GPT-2; a few others).
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def load_config(name: str, trust_remote_code: bool = False, source: str | None = None) -> Any:
    """The model's config (config.json only, no weights); `source`: where to read it, when not `name` itself
    (a full fine-tune's checkpoint)."""
    from transformers import AutoConfig

    _quiet_transformers()
    try:
        return AutoConfig.from_pretrained(source or resolve_model_path(name), trust_remote_code=trust_remote_code)
    except Exception as e:  # a config.json with a wrong type raises huggingface_hub's StrictDataclassError
        raise ModelError(f"cannot load the config of {name!r}: {first_line(e)}{_offline_hint(name)}") from None


def model_context(name: str, trust_remote_code: bool = False) -> tuple[str, int] | None:
    """(config key, value) of the model's context length from its config (config.json only, no weights), or
    None for a config that names none of the usual keys: then nothing can be checked against it."""
    cfg = load_config(name, trust_remote_code)
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg  # multimodal: the decoder's
    for key in _CONTEXT_KEYS:
        value = getattr(text_cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return key, value
    return None


def check_device(kind: str) -> None:
    """device.type = 'cuda' on a machine without CUDA: called before training starts, so it is one error rather
    than every trial failing with it."""
    if kind == "cuda" and not torch.cuda.is_available():
        raise ModelError("device.type = 'cuda' but no CUDA device is available (torch.cuda.is_available() is "
                         "False): use 'auto' or 'cpu'")


def check_gpus(gpus: str | list[int] | None) -> None:
    """device.gpus names GPUs this machine has (torch's indices, after CUDA_VISIBLE_DEVICES)."""
    if gpus is None:
        return
    if not torch.cuda.is_available():
        raise ModelError(f"device.gpus = {gpus!r} but no CUDA device is available (torch.cuda.is_available() is "
                         "False): remove device.gpus on a machine without CUDA")
    n = torch.cuda.device_count()
    missing = [i for i in gpus if i >= n] if isinstance(gpus, list) else []
    if missing:
        raise ModelError(f"device.gpus: no GPU {missing[0]} (CUDA sees {n}: cuda:0 to cuda:{n - 1})")


def pick_device(kind: str) -> torch.device:
    """'auto', 'cpu', 'cuda', or a placed GPU 'cuda:N'; a placed GPU becomes this thread's current device, so
    whatever torch allocates without naming a device (scalers, workspaces) lands there too."""
    if kind.startswith("cuda:"):
        check_device("cuda")
        device = torch.device(kind)
        torch.cuda.set_device(device)
        return device
    check_device(kind)
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast on CUDA only; 'auto' picks bf16 where the GPU supports it."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def build_model(
    name: str, method: str, params: TrialParams, device: torch.device,
    weights_dir: str | None = None, trust_remote_code: bool = False, total_steps: int = 1,
) -> torch.nn.Module:
    """Base model (or a full fine-tune's checkpoint) plus LoRA/AdaLoRA adapters, seeded with the trial's seed."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tui_tuner.training.model_dropout import set_in_config

    _quiet_transformers()
    source = weights_dir or resolve_model_path(name)
    config = load_config(name, trust_remote_code, source)
    set_in_config(config, params)  # the trial's dropout, where the architecture has it (ModelError where not)
    with RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, config=config, trust_remote_code=trust_remote_code)
        except Exception as e:  # any failure to read the user's weights is theirs to fix, in one line
            raise ModelError(f"cannot load model {name!r}: {first_line(e)}{_offline_hint(name)}") from None
        if method in ("lora", "adalora"):
            cfg = adapter_config(method, params, total_steps)
            try:
                model = get_peft_model(model, cfg)
            except ValueError as e:
                raise ModelError(f"LoRA on {name!r}: {first_line(e)}") from None
        else:
            freeze_layers(model, params.freeze_layers)
    return model.to(device)


def adapter_config(method: str, params: TrialParams, total_steps: int) -> Any:
    from peft import AdaLoraConfig, LoraConfig

    common = dict(lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                  target_modules=params.target_modules(), task_type="CAUSAL_LM")
    if method == "lora":
        return LoraConfig(r=params.lora_r, **common)
    # AdaLoRA starts at 1.5x the target rank and prunes to lora_r on average.
    return AdaLoraConfig(init_r=max(params.lora_r, round(params.lora_r * 1.5)), target_r=params.lora_r,
                         **adalora_schedule(total_steps), **common)


def adalora_schedule(total_steps: int) -> dict[str, int]:
    """AdaLoRA's rank schedule for a plan of `total_steps`: warm up for the first 10 % of the steps, reallocate
    every 10 steps, freeze the ranks for the last 20 % (peft refuses a total_step that leaves no room between)."""
    tinit, tfinal = total_steps // 10, total_steps // 5
    return {"tinit": tinit, "tfinal": tfinal, "deltaT": 10, "total_step": max(total_steps, 1 + tinit + tfinal)}


_ALLOCATOR_SCORES = ("ipt", "exp_avg_ipt", "exp_avg_unc")


def adalora_state(model: Any) -> dict[str, Any]:
    """What AdaLoRA's rank allocation carries between steps outside the weights: the rank pattern (which
    triplets are kept; every step of the frozen phase re-applies it) and the allocator's smoothed importance
    scores (the next reallocation ranks by them)."""
    alloc = model.base_model.rankallocator
    state = {key: dict(getattr(alloc, key)) for key in _ALLOCATOR_SCORES}
    return {"rank_pattern": model.peft_config["default"].rank_pattern, **state}


def load_adalora_state(model: Any, state: dict[str, Any], device: torch.device) -> None:
    model.peft_config["default"].rank_pattern = state["rank_pattern"]
    alloc = model.base_model.rankallocator
    for key in _ALLOCATOR_SCORES:
        setattr(alloc, key, {name: t.to(device) for name, t in state[key].items()})


def sync_adalora_schedule(model: Any, total_steps: int, step: int) -> None:
    """Fit AdaLoRA's rank schedule to the plan in effect (a fork may change max_steps). A trial that starts past
    the point where its ranks freeze (a fork with fewer steps) has them frozen now at the target budget, as peft
    does when it reaches that point; otherwise peft's next step would mask with a rank pattern it never made."""
    cfg = model.peft_config["default"]
    for key, value in adalora_schedule(total_steps).items():
        setattr(cfg, key, value)
    freeze_at = cfg.total_step - cfg.tfinal
    if step <= freeze_at:
        return
    alloc = model.base_model.rankallocator
    if alloc.ipt:  # peft clears the scores when it freezes the ranks: still there means never frozen
        cfg.rank_pattern = alloc.mask_to_budget(model.base_model.model, alloc.target_bgt)
        alloc.reset_ipt()
    elif cfg.rank_pattern is None:
        raise ModelError(f"AdaLoRA: step {step} is past the step where the ranks freeze ({freeze_at}) but there "
                         "are no importance scores to allocate them from (a checkpoint from an older version?)")


def adalora_orth_penalty(model: torch.nn.Module, factors: list[tuple[str, torch.nn.Parameter]]) -> torch.Tensor:
    """AdaLoRA's orthogonality regulariser, weighted as its config says: mean over the adapters' A and B of
    ||P Pᵀ - I||_F (A) or ||Pᵀ P - I||_F (B). peft adds it only when the model itself computes the loss from
    `labels`; our weighted token loss is computed outside the model, so it is added here."""
    weight = model.peft_config["default"].orth_reg_weight  # type: ignore[union-attr, index]
    terms = []
    for name, p in factors:
        cov = p @ p.T if "lora_A" in name else p.T @ p
        terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.size(0), device=cov.device, dtype=cov.dtype)))
    return weight * torch.stack(terms).mean()


def freeze_layers(model: torch.nn.Module, n: int) -> None:
    """Freeze the embeddings' neighbours: the first `n` transformer blocks (full fine-tunes)."""
    if n <= 0:
        return
    layers = _decoder_layers(model)
    if n > len(layers):
        raise ModelError(f"freeze_layers = {n} but the model has {len(layers)} layers")
    for layer in layers[:n]:
        for p in layer.parameters():
            p.requires_grad_(False)


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and "layer" in type(mod[0]).__name__.lower():
            return mod
    for _, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList):
            return mod
    raise ModelError("cannot find the transformer layers to freeze")


def _offline_hint(name: str) -> str:
    if Path(name).exists():
        return ""
    return " (a hub id needs network access or the model in the HF cache; or pass a local directory)"
