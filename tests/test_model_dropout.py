"""The base model's dropout params: set in the config the architecture has, acting in train mode only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tui_tuner.params import TrialParams
from tui_tuner.training.model import ModelError, build_model
from tui_tuner.training.model_dropout import apply_to_model

CPU = torch.device("cpu")
IDS = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))


def _params(**kw: float) -> TrialParams:
    return TrialParams(max_steps=10, lora_r=4, **kw)


def _two_passes(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model(input_ids=IDS).logits, model(input_ids=IDS).logits


def _attention_dropouts(model: torch.nn.Module) -> set[float]:
    return {m.attention_dropout for _, m in model.named_modules() if type(m).__name__ == "LlamaAttention"}


def test_llama_attention_dropout_acts_in_train_mode_only() -> None:
    model = build_model("builtin:tiny-llama", "lora", _params(attention_dropout=0.5), CPU)
    assert model.config.attention_dropout == 0.5 and _attention_dropouts(model) == {0.5}
    model.train()
    a, b = _two_passes(model)
    assert not torch.allclose(a, b)
    model.eval()
    a, b = _two_passes(model)
    assert torch.equal(a, b)


def test_without_it_llama_keeps_its_own_and_train_passes_agree() -> None:
    model = build_model("builtin:tiny-llama", "lora", _params(), CPU)
    assert _attention_dropouts(model) == {0.0}
    model.train()
    a, b = _two_passes(model)
    assert torch.equal(a, b)


def test_a_fork_changes_it_in_the_built_model() -> None:
    model = build_model("builtin:tiny-llama", "lora", _params(), CPU)
    apply_to_model(model, _params(attention_dropout=0.3))
    assert model.config.attention_dropout == 0.3 and _attention_dropouts(model) == {0.3}
    model.train()
    a, b = _two_passes(model)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("param", ["hidden_dropout", "embedding_dropout"])
def test_a_dropout_the_architecture_lacks_is_one_line_naming_param_and_model_type(param: str) -> None:
    with pytest.raises(ModelError) as err:
        build_model("builtin:tiny-llama", "lora", _params(**{param: 0.1}), CPU)
    msg = str(err.value)
    assert msg.startswith(f"{param}: llama has no {param.replace('_', ' ')} (its config has none of ")
    assert "\n" not in msg


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

    tok = ByT5Tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _dropout_ps(model: torch.nn.Module) -> dict[str, float]:
    """p of each of GPT-2's own dropout modules, by the end of its name (LoRA's are left out)."""
    return {name.split(".h.0.")[-1].split("transformer.")[-1]: m.p for name, m in model.named_modules()
            if isinstance(m, torch.nn.Dropout) and "lora" not in name and ".h.1." not in name}


def test_gpt2_maps_all_three_to_its_config_and_modules(tiny_gpt2: Path) -> None:
    params = _params(attention_dropout=0.11, hidden_dropout=0.22, embedding_dropout=0.33)
    model = build_model(str(tiny_gpt2), "lora", params, CPU)
    c = model.config
    assert (c.attn_pdrop, c.resid_pdrop, c.embd_pdrop) == (0.11, 0.22, 0.33)
    assert _dropout_ps(model) == {"attn.attn_dropout": 0.11, "attn.resid_dropout": 0.22, "mlp.dropout": 0.22,
                                  "drop": 0.33}
    apply_to_model(model, _params(attention_dropout=0.0, hidden_dropout=0.5, embedding_dropout=0.25))
    assert _dropout_ps(model) == {"attn.attn_dropout": 0.0, "attn.resid_dropout": 0.5, "mlp.dropout": 0.5,
                                  "drop": 0.25}
    assert (c.attn_pdrop, c.resid_pdrop, c.embd_pdrop) == (0.0, 0.5, 0.25)
